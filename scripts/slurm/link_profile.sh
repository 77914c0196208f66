#!/usr/bin/env bash
# Make `snakemake --profile slurm` find this repository's Slurm profile (profiles/slurm/) from any
# directory: Snakemake looks a profile name up in ./<name>, then in the user's config directory
# ${XDG_CONFIG_HOME:-~/.config}/snakemake/<name>, then /etc/xdg/snakemake/<name>. This links
#   ${XDG_CONFIG_HOME:-~/.config}/snakemake/slurm -> <repo>/profiles/slurm
# Idempotent. An existing profile there that is not this link is left alone, with a warning (then
# pass the path instead: `snakemake --profile <repo>/profiles/slurm`). Never fails the caller.
# Called by scripts/setup.sh; FLANPIPE_LINK_PROFILE=0 skips it.
set -uo pipefail
[ "${FLANPIPE_LINK_PROFILE:-1}" = 0 ] && exit 0
log() { echo "[setup] $*" >&2; }

target="$(cd "$(dirname "$0")/../../profiles/slurm" && pwd -P)" || { log "no profiles/slurm"; exit 0; }
config_home="${XDG_CONFIG_HOME:-${HOME:-}/.config}"
if [ "$config_home" = "/.config" ]; then log "HOME is not set: not linking the slurm profile"; exit 0; fi
link="$config_home/snakemake/slurm"

if [ -L "$link" ] && [ "$(readlink -f "$link")" = "$target" ]; then
  exit 0   # already there
elif [ -e "$link" ] || [ -L "$link" ]; then
  log "warning: $link exists and is not this repository's profile; left alone."
  log "         use \`snakemake --profile $target\` (or remove $link and rerun setup)"
elif mkdir -p "$(dirname "$link")" && ln -s "$target" "$link"; then
  log "linked $link -> $target (for \`snakemake --profile slurm\`)"
else
  log "warning: could not link $link; use \`snakemake --profile $target\`"
fi
exit 0
