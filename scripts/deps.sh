# Sourced by the scripts: installs spattn's Debian dependencies when any is missing.
# Build, tests, benchmarks and spattn-compare; scripts/test adds python3-torch for the
# export_qkv.py test (a large package that the other scripts do not need).
SPATTN_DEBS=(cmake ninja-build g++ libeigen3-dev libxsimd-dev xtl-dev catch2 libbenchmark-dev
             libcli11-dev libfmt-dev nlohmann-json3-dev python3-numpy python3-matplotlib)

spattn_install_deps() {
  local missing=()
  for p in "${SPATTN_DEBS[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}
