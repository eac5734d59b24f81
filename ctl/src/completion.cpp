#include "ctl/completion.hpp"

namespace tokend::ctl {

namespace {

constexpr std::string_view k_bash =
    R"sh(# bash completion for tokenctl; load with: source <(tokenctl completion bash)
_tokenctl() {
  local cur prev cmd
  cur="${COMP_WORDS[COMP_CWORD]}"
  prev="${COMP_WORDS[COMP_CWORD-1]}"
  cmd="${COMP_WORDS[1]}"
  local commands="status list token headers exec mcp api add import login logout test renew remove monitor ping version completion"
  local profile_opts="--provider --client-id --scopes --issuer --authorize-url --token-url --device-authorization-url --registration-url --revocation-url --userinfo-url --redirect-uri --mcp-server --resource --audience --pkce --prompt --authorize-param --authorization-server --token-endpoint-auth --reuse-window --refresh-buffer --site --api-base --sink-file --sink-dotenv"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "$commands --socket --help" -- "$cur"))
    return
  fi
  case "$prev" in
    --format) COMPREPLY=($(compgen -W "raw header json env exec-credential" -- "$cur")); return ;;
    --kind) COMPREPLY=($(compgen -W "oauth2 api-token pat" -- "$cur")); return ;;
    --provider) COMPREPLY=($(compgen -W "atlassian atlassian-dc generic mcp" -- "$cur")); return ;;
    --pkce) COMPREPLY=($(compgen -W "S256 required off" -- "$cur")); return ;;
    --token-endpoint-auth) COMPREPLY=($(compgen -W "client_secret_basic client_secret_post none" -- "$cur")); return ;;
    --client) COMPREPLY=($(compgen -W "claude-code claude-desktop codex cursor vscode gemini opencode" -- "$cur")); return ;;
    --*-file|--file|--dotenv|--sink-dotenv) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --data|-d) COMPREPLY=($(compgen -P @ -f -- "${cur#@}")); return ;;
    completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
  esac
  case "$cmd" in
    status|token|headers|exec|api|renew|remove|monitor|login|logout|test|add|import)
      if [ "$COMP_CWORD" -eq 2 ]; then
        COMPREPLY=($(compgen -W "$(tokenctl list -q 2>/dev/null)" -- "$cur"))
        return
      fi ;;
  esac
  case "$cmd" in
    mcp)
      if [ "$COMP_CWORD" -eq 2 ]; then
        COMPREPLY=($(compgen -W "config $(tokenctl list -q 2>/dev/null)" -- "$cur"))
      elif [ "${COMP_WORDS[2]}" = config ] && [ "$COMP_CWORD" -eq 3 ]; then
        COMPREPLY=($(compgen -W "$(tokenctl list -q 2>/dev/null)" -- "$cur"))
      elif [ "${COMP_WORDS[2]}" = config ]; then
        COMPREPLY=($(compgen -W "--client --name --write --file --force --" -- "$cur"))
      else
        COMPREPLY=($(compgen -W "--wait" -- "$cur"))
      fi ;;
    token) COMPREPLY=($(compgen -W "--min-valid --wait --format" -- "$cur")) ;;
    headers) COMPREPLY=($(compgen -W "--min-valid" -- "$cur")) ;;
    exec) COMPREPLY=($(compgen -W "--endpoint --url-env --standin-env --user-env --env --min-valid --wait --" -- "$cur")) ;;
    api)
      if [ "$COMP_CWORD" -eq 3 ]; then
        COMPREPLY=($(compgen -W "GET POST PUT PATCH DELETE HEAD" -- "$cur"))
      else
        COMPREPLY=($(compgen -W "--data --header --include --timeout" -- "$cur"))
      fi ;;
    status|list|monitor|test) COMPREPLY=($(compgen -W "--json" -- "$cur")) ;;
    login) COMPREPLY=($(compgen -W "--device --no-browser --timeout" -- "$cur")) ;;
    add) COMPREPLY=($(compgen -W "--kind --client-secret-file --email --token-file --refresh-token-file --expires-in $profile_opts" -- "$cur")) ;;
    import) COMPREPLY=($(compgen -W "--dotenv --from-env $profile_opts" -- "$cur")) ;;
  esac
}
complete -F _tokenctl tokenctl
)sh";

constexpr std::string_view k_zsh = R"sh(#compdef tokenctl
# zsh completion for tokenctl; load with: source <(tokenctl completion zsh)
_tokenctl() {
  local -a commands
  commands=(
    'status:profiles, states and expiry'
    'list:profile names, kinds and states'
    'token:print a valid token'
    'headers:Authorization header as JSON'
    'exec:run a command with a fresh credential (--endpoint: a loopback URL and a stand-in)'
    'mcp:stdio MCP bridge through tokend; mcp config: an MCP client'\''s entry'
    'api:an API call through the proxy'
    'add:store a profile'
    'import:take over a JIRA_OAUTH_* token set from .env or the environment'
    'login:sign in with the browser or a device code'
    'logout:revoke and forget the tokens'
    'test:check the token against the provider'
    'renew:refresh now'
    'remove:delete a profile'
    'monitor:live events'
    'ping:is tokend running?'
    'version:show the version'
    'completion:shell completion script'
  )
  if (( CURRENT == 2 )); then
    _describe 'command' commands
    return
  fi
  case "$words[2]" in
    status|token|headers|exec|api|renew|remove|monitor|login|logout|test|add|import)
      if (( CURRENT == 3 )); then
        local -a profiles
        profiles=(${(f)"$(tokenctl list -q 2>/dev/null)"})
        _describe 'profile' profiles
        return
      fi
      ;|
    status|token|headers|renew|remove|monitor)
      _arguments '--format[output format]:format:(raw header json env exec-credential)' \
                 '--min-valid[seconds of validity]:seconds:' '--wait[seconds to wait]:seconds:' '--json[JSON output]'
      ;;
    test) _arguments '--json[JSON output]' ;;
    exec)
      _arguments '*--env[also put the token (with --endpoint: the stand-in) into this variable]:name:' \
                 '--min-valid[seconds of validity]:seconds:' '--wait[seconds to wait]:seconds:' \
                 '--endpoint[a loopback URL and a stand-in credential instead of the token]' \
                 '*--url-env[put the endpoint URL into NAME, or NAME=jira|confluence]:name:' \
                 '*--standin-env[put the stand-in credential into NAME]:name:' \
                 '*--user-env[put a user name for Basic into NAME]:name:' '*::command:_normal'
      ;;
    api)
      if (( CURRENT == 4 )); then
        _values 'method' GET POST PUT PATCH DELETE HEAD
      else
        _arguments '--data[request body: @FILE, - or text]:body:_files -P @' '*--header[Name: value]:header:' \
                   '--include[print status and headers]' '--timeout[seconds without progress]:seconds:'
      fi
      ;;
    mcp)
      local -a profiles
      profiles=(${(f)"$(tokenctl list -q 2>/dev/null)"})
      if (( CURRENT == 3 )); then
        local -a choices
        choices=('config:print or write an MCP client'\''s entry' $profiles)
        _describe 'profile' choices
      elif [[ "$words[3]" == config ]] && (( CURRENT == 4 )); then
        _describe 'profile' profiles
      elif [[ "$words[3]" == config ]]; then
        _arguments '--client[MCP client]:client:(claude-code claude-desktop codex cursor vscode gemini opencode)' \
                   '--name[entry name]:name:' '--write[merge into the client'\''s config file]' \
                   '--file[config file for --write]:file:_files' \
                   '--force[replace an entry of that name that does not run tokenctl]' '*::command:_normal'
      else
        _arguments '--wait[seconds to wait for a login]:seconds:'
      fi
      ;;
    logout) ;;
    login)
      _arguments '--device[device code flow]' '--no-browser[print the URL, paste the result back]' \
                 '--timeout[seconds to wait]:seconds:'
      ;;
    add|import)
      local -a profile_opts
      profile_opts=(
        '--provider[provider]:provider:(atlassian atlassian-dc generic mcp)'
        '--client-id[OAuth client id]:id:' '--scopes[space-separated scopes]:scopes:'
        '--issuer[issuer URL]:url:' '--authorize-url[authorization endpoint]:url:'
        '--token-url[token endpoint]:url:' '--device-authorization-url[device endpoint]:url:'
        '--registration-url[client registration endpoint]:url:'
        '--revocation-url[revocation endpoint]:url:' '--userinfo-url[userinfo endpoint]:url:'
        '--redirect-uri[redirect URI]:uri:' '--mcp-server[MCP server URL]:url:'
        '--resource[resource indicator]:uri:' '--audience[audience]:audience:'
        '--pkce[PKCE]:pkce:(S256 required off)' '--prompt[prompt parameter]:prompt:(consent login select_account none)'
        '*--authorize-param[extra authorization parameter K=V]:param:'
        '--authorization-server[authorization server issuer (mcp)]:url:'
        '--token-endpoint-auth[client authentication]:method:(client_secret_basic client_secret_post none)'
        '--reuse-window[seconds]:seconds:' '--refresh-buffer[seconds]:seconds:'
        '--site[site URL]:url:' '--api-base[API base URL]:url:'
        '*--sink-file[token file sink]:file:_files' '*--sink-dotenv[dotenv sink PATH=VARIABLE]:file:_files'
      )
      if [[ "$words[2]" == add ]]; then
        _arguments $profile_opts '--kind[credential kind]:kind:(oauth2 api-token pat)' \
                   '--email[account email]:email:' '--expires-in[seconds]:seconds:' \
                   '--token-file[token file]:file:_files' '--client-secret-file[secret file]:file:_files' \
                   '--refresh-token-file[refresh token file]:file:_files'
      else
        _arguments $profile_opts '--dotenv[.env file]:file:_files' '--from-env[read the environment]'
      fi
      ;;
    completion) _values 'shell' bash zsh ;;
  esac
}
if [ "$funcstack[1]" = "_tokenctl" ]; then _tokenctl "$@"; else compdef _tokenctl tokenctl; fi
)sh";

}  // namespace

Result<std::string> completion_script(std::string_view shell) {
  if (shell == "bash") return std::string(k_bash);
  if (shell == "zsh") return std::string(k_zsh);
  return fail(Errc::invalid_argument, "completion is available for bash and zsh");
}

}  // namespace tokend::ctl
