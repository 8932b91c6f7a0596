# Sourced by the scripts that run on a lent GPU machine (tools/gpu_check.sh, tools/pack_on_device.sh),
# from the repository root: installs what a bare machine lacks, when it travelled with the tree.
#   - wheels in ${WHEELS:-.whl}/ (tools/gpu_wheels.sh fetches them) into /tmp/site, on PYTHONPATH;
#   - the EGL loaders for MuJoCo's headless rendering, .deb files in .gl/ (DMC=1 tools/gpu_wheels.sh).
# The repository root goes first on PYTHONPATH. Needs PY (the python to use); exits 3 if the wheels fail.
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d .gl ] && ls .gl/*.deb > /dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
fi
