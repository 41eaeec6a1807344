#!/usr/bin/env bash
# Build .gpusite.tgz: the Python packages the GPU machine (device tool) lacks, for Python 3.12 /
# x86-64 / CUDA 13, slimmed to fit the device tool's 64 MiB carry limit. Run from the repo root:
#     benchmarks/gpu_bundle.sh            # writes .gpusite.tgz (git-ignored)
# On the device (carry [".gpusite.tgz"]):
#     mkdir -p /tmp/site && tar xzf .gpusite.tgz -C /tmp/site && export PYTHONPATH=$PWD:/tmp/site/main
# Layout inside the tarball, so contenders that pin conflicting versions never share one path:
#   main/    unsloth + unsloth_zoo + bitsandbytes (cuda130 + cpu libs only) + trl 1.15 + datasets 4.8.5
#            (what ../shared/gpu/make-gpu-site.sh carries: Unsloth pins trl<=1.15, datasets<5)
#   trl116/  trl 1.16.0 alone; put it *before* main/ on PYTHONPATH for the TRL DPOTrainer baseline
#            the issue names (it needs datasets>=4.7, which main/ has).
# The GPU image already has torch 2.11+cu130, transformers 5.17, peft, accelerate, triton.
set -euo pipefail
out=${1:-.gpusite.tgz}
py=${PYTHON:-python3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dl=$tmp/dl; site=$tmp/site/main; trl=$tmp/site/trl116; mkdir -p "$dl" "$site" "$trl" "$tmp/dl116"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d "$dl" unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 dill==0.4.0 multiprocess==0.70.18 \
  tyro docstring_parser shtab typeguard torchao cut_cross_entropy hf_transfer json5 nest_asyncio structlog msgspec \
  diffusers bitsandbytes==0.50.2 sentencepiece
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d "$tmp/dl116" trl==1.16.0
for w in "$dl"/*.whl; do (cd "$site" && unzip -q -o "$w"); done
for w in "$tmp"/dl116/*.whl; do (cd "$trl" && unzip -q -o "$w"); done
rm -rf "$site/studio" "$site/unsloth/studio"
find "$site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130.so' ! -name '*cpu.so' -delete
tar czf "$out" -C "$tmp/site" .
size=$(stat -c %s "$out")
ls -la "$out"
if [ "$size" -gt $((56 * 1024 * 1024)) ]; then
  echo "warning: $out is $((size / 1024 / 1024)) MiB; the device tool carries 64 MiB in all (working tree included)" >&2
fi
