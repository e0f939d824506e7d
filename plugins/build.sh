#!/usr/bin/env bash
# Builds the example plugins (examples/*.c) into OUT_DIR/NAME.wasm with clang and wasm-ld
# (Debian's clang and lld): freestanding C for wasm32, no libc, the ABI of
# include/nexus_plugin.h. Usage: plugins/build.sh OUT_DIR [NAME...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: plugins/build.sh OUT_DIR [NAME...]}"
shift
mkdir -p "$out"
clang="$(command -v clang || compgen -G '/usr/bin/clang-*' | sort -V | tail -1)"
ld_flag=()
if ! command -v wasm-ld >/dev/null; then
  ld="$(compgen -G '/usr/bin/wasm-ld-*' | sort -V | tail -1 || compgen -G '/usr/lib/llvm-*/bin/wasm-ld' | sort -V | tail -1)"
  ld_flag=(-fuse-ld="$ld")
fi
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in "$here"/examples/*.c; do names+=("$(basename "$f" .c)"); done
fi
for name in "${names[@]}"; do
  "$clang" --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding \
    -I "$here/include" "${ld_flag[@]}" \
    -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all \
    -o "$out/$name.wasm" "$here/examples/$name.c"
  echo "$out/$name.wasm"
done
