# Sourced by this session's device scripts: `. benchmarks/device/device_env.sh ENV_FILE`.
# Installs the carried wheels (.whl/: flashinfer-python, apache-tvm-ffi; see ../shared/tools/device-wheels.sh) into
# /tmp/site, puts it and the checkout on PYTHONPATH, and writes the GPU, driver and package versions to ENV_FILE.
# Comparing two source trees in one call: run each from its own directory (`cd TREE && PYTHONPATH=/tmp/site:TREE ...`).
# `python3 -m` and pytest put the working directory first on sys.path, ahead of PYTHONPATH, so a second tree on
# PYTHONPATH alone is never imported (session10_topp_ab.sh does it right; session10_merge.sh did not).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" 2>/dev/null; } > "$1"
