#!/usr/bin/env bash
# Make sure the system programs voxclone needs are installed (Debian/Ubuntu), or say what to install.
#   scripts/system-deps.sh run    ffmpeg (audio intake), libopus (voice), gcc (builds webrtcvad, whisper)
#   scripts/system-deps.sh test   the above plus espeak-ng (test speech) and postgresql (storage tests)
set -euo pipefail

want=(ffmpeg libopus0 gcc)
[[ "${1:-run}" == "test" ]] && want+=(espeak-ng postgresql)

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "Please install: ${missing[*]} (ffmpeg, libopus, gcc$( [[ "${1:-run}" == test ]] && echo ', espeak-ng, PostgreSQL server'))" >&2
    exit 2
fi
SUDO=()
if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null || { echo "Please run as root: apt-get install ${missing[*]}" >&2; exit 2; }
    SUDO=(sudo)
fi
echo "installing system packages: ${missing[*]}" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
