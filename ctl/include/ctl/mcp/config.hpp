// `tokenctl mcp config`: an MCP client's config entry that starts
// `tokenctl mcp PROFILE` (or a local server under `tokenctl exec --endpoint`),
// printed in the client's own format or merged into its config file
// (docs/mcp-clients.md).
//
// Everything but write_entry_to_file() is pure: the entry, its text, the merge
// of that text into a file's text, and the default file of each client.
//
// Merging edits the file's text in place rather than re-serialising it: every
// byte outside the one entry (and, for a new entry, the comma or table that
// holds it) stays as it was, so a hand-formatted file keeps its layout, key
// order and number spellings.
#pragma once

#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/paths.hpp"

namespace tokend::ctl {

enum class McpClient { claude_code, claude_desktop, codex, cursor, vscode, gemini, opencode };

std::optional<McpClient> parse_mcp_client(std::string_view name);
std::string_view mcp_client_name(McpClient client);
// "claude-code, claude-desktop, codex, cursor, vscode, gemini or opencode".
std::string_view mcp_client_list();

// What the client runs. `env` keeps its order.
struct McpServerEntry {
  std::string name;
  std::string command;
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
};

// Entry names are 1-64 characters of [A-Za-z0-9_-]: a bare TOML key and a
// name every client accepts (Codex refuses others).
Result<> validate_entry_name(std::string_view name);
// The profile name with each '.' turned into '-'.
std::string default_entry_name(std::string_view profile);

// `tokenctl mcp PROFILE`.
McpServerEntry bridge_entry(std::string name, std::string tokenctl, std::string_view profile,
                            std::vector<std::pair<std::string, std::string>> env);
// `tokenctl exec PROFILE --endpoint [EXEC_OPTION...] -- COMMAND...`;
// `--endpoint` is not repeated when exec_options already hold it.
McpServerEntry exec_entry(std::string name, std::string tokenctl, std::string_view profile,
                          const std::vector<std::string>& exec_options,
                          const std::vector<std::string>& command,
                          std::vector<std::pair<std::string, std::string>> env);

// The entry as a snippet of the client's file: a whole JSON document holding
// just this entry, or the TOML table(s). Ends with a newline. Fails
// (invalid_argument) for strings that are not UTF-8.
Result<std::string> render_entry(McpClient client, const McpServerEntry& entry);

enum class MergeAction { added, replaced, unchanged };

struct Merged {
  std::string text;
  MergeAction action = MergeAction::unchanged;
};

// `existing` merged with the entry. An empty (or blank) `existing` gives a new
// file. An entry of the same name that does not run tokenctl is replaced only
// with `replace_foreign`; otherwise Errc::conflict. Text that does not parse,
// JSON with comments (which cannot be kept) and forms this merge does not edit
// (a Codex server written as an inline table or dotted keys) are Errc::corrupt
// with a message that says what is wrong, where (line and column, never the
// content) and what to do. `source` names the text in messages.
Result<Merged> merge_entry(McpClient client, std::string_view existing, const McpServerEntry& entry,
                           bool replace_foreign, std::string_view source);

enum class HostOs { linux_like, macos };
HostOs host_os();

// The client's user-level config file: HOME (else the passwd entry),
// XDG_CONFIG_HOME and CODEX_HOME as each client reads them. opencode:
// opencode.json, or opencode.jsonc when only that one exists (`exists` is
// asked).
std::filesystem::path default_config_path(McpClient client, HostOs os, const EnvLookup& env,
                                          bool (*exists)(const std::filesystem::path&) = nullptr);

struct WriteOutcome {
  MergeAction action = MergeAction::unchanged;
  std::filesystem::path file;                   // the file written (symlinks followed)
  std::optional<std::filesystem::path> backup;  // the previous file, when there was one
};

// Merges the entry into `path`: a symlink is followed and its target written;
// missing parent directories are created (0700); the old file is copied to
// FILE.bak-YYYYmmddTHHMMSS (-N added when taken) with its mode; the new text
// is written atomically (temporary file, fsync, rename) with the old file's
// mode, 0600 for a new file. Unchanged text writes nothing. On any error the
// file is as it was.
Result<WriteOutcome> write_entry_to_file(McpClient client, const std::filesystem::path& path,
                                         const McpServerEntry& entry, bool replace_foreign,
                                         std::time_t now);

// The absolute path of the running tokenctl (/proc/self/exe; on macOS the
// loader's answer), or "tokenctl" when it cannot be had: GUI clients do not
// start with the user's PATH.
std::string tokenctl_path();

// `tokenctl mcp config` arguments (everything after `config`).
struct McpConfigArgs {
  std::string profile;
  std::optional<McpClient> client;
  std::optional<std::string> name;
  bool write = false;
  bool force = false;
  std::optional<std::filesystem::path> file;
  // With `-- CMD`: the command wrapped with exec, and the options before `--`
  // that are not mcp config's own, passed to exec as they are.
  std::vector<std::string> exec_options;
  std::vector<std::string> command;
  bool help = false;
};

// Usage errors are Errc::invalid_argument.
Result<McpConfigArgs> parse_mcp_config_args(const std::vector<std::string>& args);

}  // namespace tokend::ctl
