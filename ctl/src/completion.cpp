#include "ctl/completion.hpp"

namespace tokend::ctl {

namespace {

constexpr std::string_view k_bash = R"sh(# bash completion for tokenctl; load with: source <(tokenctl completion bash)
_tokenctl() {
  local cur prev cmd
  cur="${COMP_WORDS[COMP_CWORD]}"
  prev="${COMP_WORDS[COMP_CWORD-1]}"
  cmd="${COMP_WORDS[1]}"
  local commands="status list token headers add renew remove monitor ping version completion"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "$commands --socket --help" -- "$cur"))
    return
  fi
  case "$prev" in
    --format) COMPREPLY=($(compgen -W "raw header json env exec-credential" -- "$cur")); return ;;
    --kind) COMPREPLY=($(compgen -W "oauth2 api-token pat" -- "$cur")); return ;;
    --provider) COMPREPLY=($(compgen -W "atlassian generic mcp" -- "$cur")); return ;;
    --*-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
  esac
  case "$cmd" in
    status|token|headers|renew|remove|monitor)
      if [ "$COMP_CWORD" -eq 2 ]; then
        COMPREPLY=($(compgen -W "$(tokenctl list -q 2>/dev/null)" -- "$cur"))
        return
      fi ;;
  esac
  case "$cmd" in
    token) COMPREPLY=($(compgen -W "--min-valid --wait --format" -- "$cur")) ;;
    status|list|monitor) COMPREPLY=($(compgen -W "--json" -- "$cur")) ;;
    add) COMPREPLY=($(compgen -W "--kind --provider --client-id --client-secret-file --scopes --issuer --authorize-url --token-url --redirect-uri --mcp-server --site --email --token-file --refresh-token-file --expires-in --api-base" -- "$cur")) ;;
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
    'add:store a profile'
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
    status|token|headers|renew|remove|monitor)
      if (( CURRENT == 3 )); then
        local -a profiles
        profiles=(${(f)"$(tokenctl list -q 2>/dev/null)"})
        _describe 'profile' profiles
        return
      fi
      _arguments '--format[output format]:format:(raw header json env exec-credential)' \
                 '--min-valid[seconds of validity]:seconds:' '--wait[seconds to wait]:seconds:' '--json[JSON output]'
      ;;
    add)
      _arguments '--kind[credential kind]:kind:(oauth2 api-token pat)' \
                 '--provider[provider]:provider:(atlassian generic mcp)' \
                 '--token-file[token file]:file:_files' '--client-secret-file[secret file]:file:_files' \
                 '--refresh-token-file[refresh token file]:file:_files' '*:option:'
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
