#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that a bare GPU machine with PyTorch lacks for
# tools/gpu_check.sh (Atari + MLflow tracking): CPython 3.12, manylinux x86-64, no
# dependencies resolved (the list below is complete for that image: torch, numpy, einops, opencv,
# pandas, matplotlib, pytest and pytest-benchmark were already there). 23 MB; mlflow-skinny
# instead of mlflow (no UI, same SQLite tracking). Run it where pip reaches a package index.
# DMC=1 adds what the DMC game needs (MuJoCo, dm_control and the three packages they import that
# the image lacks), trimmed to fit a device call's 64 MiB: dm_control without its locomotion
# assets, the dog's meshes and the Blender add-on (the DMC suite's other domains import none of
# them), MuJoCo without its experimental viewer; ≈60 MB in all with the above.
set -euo pipefail
DEST=${1:-.whl}
mkdir -p "$DEST"
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64)
WHEELS=(
  gin-config==0.5.0 gymnasium==1.4.0 farama-notifications==0.0.6 ale-py==0.12.1
  mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 sqlparse==0.6.1
  cachetools==7.3.3 databricks-sdk==0.162.0 google-auth==2.63.0 pyasn1==0.6.3 pyasn1-modules==0.4.2 rsa==4.7.2
  cryptography==48.0.0 cffi==2.0.0 pycparser==3.0 fastapi==0.165.0 starlette==1.10.0 sniffio==1.3.1
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2
  opentelemetry-semantic-conventions==0.66b2 orjson==3.10.18 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  importlib-metadata==9.1.0 python-dotenv==1.2.2 pytz==2026.6
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]/#/--platform=}" -d "$DEST" "${WHEELS[@]}"
if [ "${DMC:-0}" = 1 ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d "$DEST" \
    dm-control==1.0.50 mujoco==3.17.0 dm-env==1.6 dm-tree==0.1.10 pyopengl==3.1.10
  python3 "$(dirname "$0")/trim_wheel.py" "$DEST"/dm_control-*.whl dm_control/locomotion/ \
    dm_control/suite/dog_assets/ dm_control/blender/ dm_control/suite/all_domains.png
  python3 "$(dirname "$0")/trim_wheel.py" "$DEST"/mujoco-*.whl mujoco/experimental/
  # EGL's loaders for MuJoCo's headless rendering (0.4 MB of .deb files; gpu_check.sh unpacks
  # them): the device notes' recipe. Carry .gl/ beside .whl/.
  GL=${GL:-.gl}
  mkdir -p "$GL" /tmp/amd64/partial
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${o[@]}" update -qq
  (cd "$GL" && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
ls "$DEST" | wc -l
du -sh "$DEST"
