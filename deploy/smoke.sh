#!/usr/bin/env bash
# End-to-end smoke test of the docker compose stack (deploy/compose/compose.yaml):
# builds what is missing, starts listener, CPU worker, admin, Redis, PostgreSQL
# and the trial Orthanc, pushes a real study with DCMTK storescu into Orthanc
# (which routes it to the listener), waits until the SEG, Parametric Maps and
# SR are back in Orthanc, kills the worker during a second study and checks
# that the study still completes with exactly one job, then tears it all down.
#
#   bash deploy/smoke.sh            # as a user who may run docker (root to build the base image)
#
# It needs docker (with BuildKit: the daemon's own or the buildx plugin), docker
# compose (v2, or v1 "docker-compose"), DCMTK's storescu and python3; to build
# the Debian base image without a registry, debootstrap and root.
# Environment (all optional):
#   SMOKE_DATA           real data folder (default: ../shared/data next to the repository)
#   SMOKE_BASE_IMAGE     base image for every image (default: one made here with debootstrap)
#   SMOKE_TORCH_WHEELS   folder holding the torch CPU wheel (default: what pip finds locally)
#   SMOKE_KEEP=1         leave the stack running at the end or on a failure
#   SMOKE_REMOVE_IMAGES=1  at the end, remove the images this script built and docker's
#                        build cache, leaving docker's disk as it was (the test suite does)
#   SMOKE_MIN_FREE_GB    free disk that docker's data folder needs before a build
#                        (default: by storage driver, from measured runs; see deploy/README.md)
#   SMOKE_TIMEOUT        seconds allowed for each study (default 1500)
# It prints "SMOKE FAILED: <step>: <why>" and exits 1 at the first failing step,
# and "SMOKE OK" with the measured figures at the end.
set -euo pipefail

deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$deploy")"
compose_dir="$deploy/compose"
helper="$deploy/smoke/smoke_helper.py"
prefix="${SMOKE_IMAGE_PREFIX:-neuroseg-smoke}"
export SMOKE_IMAGE_PREFIX="$prefix"
data="${SMOKE_DATA:-$(dirname "$root")/shared/data}"
study_timeout="${SMOKE_TIMEOUT:-1500}"
step_name="start"
started=$(date +%s)

step() { step_name="$*"; echo "== $* ($(( $(date +%s) - started )) s)"; }
fail() { echo "SMOKE FAILED: $step_name: $*" >&2; exit 1; }
on_error() { echo "SMOKE FAILED: $step_name: command failed (line $1): $2" >&2; }
trap 'on_error $LINENO "$BASH_COMMAND"' ERR

# Runs "$@" until it prints something matching $2 or $1 seconds pass; prints the last output.
wait_for() {
  local timeout=$1 pattern=$2 deadline out
  shift 2
  deadline=$(( $(date +%s) + timeout ))
  while true; do
    out="$("$@" 2>&1 || true)"
    if [[ "$out" =~ $pattern ]]; then echo "$out"; return 0; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "$out"; return 1; fi
    sleep 3
  done
}

# Content hash of files, to tell whether an image is up to date (its label "io.neuroseg.smoke-hash").
content_hash() {
  (cd "$root" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
image_hash() { docker image inspect -f '{{ index .Config.Labels "io.neuroseg.smoke-hash" }}' "$1" 2>/dev/null || true; }

step "prerequisites"
docker info >/dev/null 2>&1 || fail "docker cannot reach a daemon (docker info failed)"
read -r storage_driver docker_root < <(docker info -f '{{.Driver}} {{.DockerRootDir}}')
# vfs keeps a full copy of every layer and of every container's file system
case "$storage_driver" in vfs) min_free_gb=40 ;; *) min_free_gb=12 ;; esac
min_free_gb="${SMOKE_MIN_FREE_GB:-$min_free_gb}"
free_gb=$(( $(df -Pk "$docker_root" 2>/dev/null | awk 'NR == 2 {print $4}' || echo 0) / 1048576 ))
echo "docker storage $storage_driver in $docker_root: $free_gb GB free"
disk_used_kb() { df -Pk "$docker_root" | awk 'NR == 2 {print $3}'; }
used_at_start_kb=$(disk_used_kb)
[ "$free_gb" -ge "$min_free_gb" ] \
  || fail "$free_gb GB free in $docker_root, the $storage_driver storage driver needs $min_free_gb GB (SMOKE_MIN_FREE_GB)"
# DCMTK's storescu, not pynetdicom's (a Python environment on PATH ships one of the same name)
storescu=""
for candidate in $(type -ap storescu); do
  # grep without -q reads to the end: with -q it may exit first, storescu then dies of SIGPIPE
  # and pipefail makes the match a failure
  if "$candidate" --version 2>/dev/null | grep -i dcmtk >/dev/null; then storescu="$candidate"; break; fi
done
[ -n "$storescu" ] || fail "DCMTK's storescu is not installed (or only pynetdicom's is on PATH)"
command -v python3 >/dev/null || fail "python3 is not installed"
[ -d "$data/real-mri/brats-gli-00001-000" ] || fail "no real data at $data (set SMOKE_DATA)"
if docker compose version >/dev/null 2>&1; then
  compose_kind=v2
elif command -v docker-compose >/dev/null; then
  compose_kind=v1
else
  fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
# BuildKit reads Dockerfile.dockerignore; the legacy builder would send the whole tree.
# A docker CLI without the buildx plugin builds with BuildKit only when it is older than 23.
docker_build=()
for cli in $(type -ap docker); do
  if "$cli" buildx version >/dev/null 2>&1; then docker_build=("$cli" build); break; fi
  if printf 'FROM scratch\nLABEL probe=1\n' | DOCKER_BUILDKIT=1 "$cli" build -q - >/dev/null 2>&1; then
    docker_build=(env DOCKER_BUILDKIT=1 "$cli" build); break
  fi
done
[ ${#docker_build[@]} -gt 0 ] || fail "no docker CLI here builds with BuildKit (install the buildx plugin)"
echo "compose $compose_kind; build: ${docker_build[*]}"

work="$(mktemp -d "${TMPDIR:-/tmp}/neuroseg-smoke.XXXXXX")"
export SMOKE_DIR="$work"
project="neuroseg-smoke-$$"
compose() {
  if [ "$compose_kind" = v2 ]; then
    docker compose -p "$project" -f "$compose_dir/compose.yaml" -f "$compose_dir/compose.test.yaml" "$@"
  else
    # Compose v1 predates the top-level "name" key (see compose.v1.yaml below)
    docker-compose -p "$project" --project-directory "$compose_dir" \
      -f "$work/compose.v1.yaml" -f "$compose_dir/compose.test.yaml" "$@"
  fi
}
teardown() {
  local rc=$?
  trap - ERR
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then
    echo "SMOKE_KEEP=1: the stack stays up (project $project, files in $work)"
    return
  fi
  if [ $rc -ne 0 ] && [ -f "$work/compose.env" ]; then
    echo "-- last log lines of each service"
    compose logs --tail 30 2>&1 | tail -n 200 || true
  fi
  if [ -f "$work/compose.env" ]; then compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
  rm -rf "$work"
  if [ "${SMOKE_REMOVE_IMAGES:-0}" = 1 ]; then
    local built=(neuroseg:smoke "$prefix"/redis:bookworm "$prefix"/postgres:bookworm "$prefix"/orthanc:bookworm)
    [ -n "${SMOKE_BASE_IMAGE:-}" ] || built+=("$prefix"/base:bookworm)
    docker image rm -f "${built[@]}" >/dev/null 2>&1 || true
    docker builder prune -af >/dev/null 2>&1 || true
    echo "removed the images and the build cache: docker uses $(du -sh "$docker_root" 2>/dev/null | cut -f1) in $docker_root"
  fi
}
trap teardown EXIT

step "base image"
if [ -n "${SMOKE_BASE_IMAGE:-}" ]; then
  base="$SMOKE_BASE_IMAGE"
else
  base="$prefix/base:bookworm"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || fail "debootstrap is not installed (or set SMOKE_BASE_IMAGE)"
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root (or set SMOKE_BASE_IMAGE)"
    rootfs="$work/rootfs"
    nice -n 19 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian > "$work/debootstrap.log" 2>&1 \
      || { tail -n 20 "$work/debootstrap.log"; fail "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # trust what the host trusts (a TLS-inspecting proxy's CA included): builds reach PyPI
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' \
      -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$base" >/dev/null
    rm -rf "$rootfs"
  fi
fi
base_id="$(docker image inspect -f '{{.Id}}' "$base")"

step "service images (Redis, PostgreSQL, Orthanc from Debian's packages)"
for service in redis postgres orthanc; do
  hash="$(content_hash $(cd "$root" && ls deploy/smoke/"$service"*) | cut -c1-8)-${base_id:7:8}"
  if [ "$(image_hash "$prefix/$service:bookworm")" != "$hash" ]; then
    nice -n 19 "${docker_build[@]}" --network host -q -f "$deploy/smoke/$service.Dockerfile" \
      --build-arg BASE_IMAGE="$base" --label io.neuroseg.smoke-hash="$hash" \
      -t "$prefix/$service:bookworm" "$deploy/smoke" > "$work/build-$service.log" 2>&1 \
      || { tail -n 30 "$work/build-$service.log"; fail "building the $service image failed"; }
  fi
done

step "neuroseg image (deploy/compose/Dockerfile)"
image="neuroseg:smoke"
hash="$(content_hash pyproject.toml README.md listener worker model dicom_out common \
        deploy/compose/Dockerfile deploy/compose/Dockerfile.dockerignore | cut -c1-8)-${base_id:7:8}"
build_seconds=0
if [ "$(image_hash "$image")" != "$hash" ]; then
  build_started=$(date +%s)
  torch_args=(--build-arg TORCH_VERSION=2.13.0+cpu)  # the CPU wheel or nothing: never a CUDA build
  wheels="${SMOKE_TORCH_WHEELS:-$work/wheels}"
  if [ -z "${SMOKE_TORCH_WHEELS:-}" ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: "torch==2.13.0+cpu" -d "$wheels" >/dev/null 2>&1 || true
  fi
  staged_wheels=()
  for wheel in "$wheels"/torch-2.13.0+cpu-*.whl; do
    [ -f "$wheel" ] || continue
    # a folder of the build context (deploy/compose/wheels): its content, not its
    # location, keys the build cache, so the torch layer is built once
    staged="$compose_dir/wheels/$(basename "$wheel")"
    ln -f "$wheel" "$staged" 2>/dev/null || cp "$wheel" "$staged"
    staged_wheels+=("$staged")
    torch_args+=(--build-arg TORCH_INDEX_URL=)
  done
  nice -n 19 "${docker_build[@]}" --network host -f "$compose_dir/Dockerfile" --build-arg VARIANT=cpu \
    --build-arg BASE_IMAGE="$base" "${torch_args[@]}" --label io.neuroseg.smoke-hash="$hash" \
    -t "$image" "$root" > "$work/build-neuroseg.log" 2>&1 \
    || { rm -f "${staged_wheels[@]}"; tail -n 40 "$work/build-neuroseg.log"; fail "building the neuroseg image failed"; }
  rm -f "${staged_wheels[@]}"
  build_seconds=$(( $(date +%s) - build_started ))
  docker image prune -f >/dev/null 2>&1 || true  # the replaced image's layers (vfs keeps full copies)
fi
image_size="$(docker image inspect -f '{{.Size}}' "$image")"
echo "neuroseg image: $(( image_size / 1000000 )) MB"

step "two real studies as DICOM (from $data)"
# written once and kept: every run starts with empty volumes, so the same UIDs can be sent again
studies="${XDG_CACHE_HOME:-$HOME/.cache}/neuroseg-smoke/studies-1"
write_studies='
import sys, glob
DATA, OUT = sys.argv[2], sys.argv[3]
from neuroseg.dicom_out.mr_series import StudyIdentity, write_study_from_nifti
cases = {"first": DATA + "/real-mri/brats-gli-00001-000", "second": DATA + "/real-gt/brats-gli-algorithm-label"}
keys = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
for name, case in cases.items():
    paths = {role: glob.glob(f"{case}/*{key}.nii.gz")[0] for role, key in keys.items()}
    identity = StudyIdentity(patient_name="Smoke^" + name.title(), patient_id="NEUROSEG-SMOKE-" + name.upper(),
                             uid_seed="neuroseg-smoke-" + name + "-" + sys.argv[1], study_description="MR BRAIN (smoke test)")
    write_study_from_nifti(paths, OUT + "/" + name, identity)
    print(name, identity.resolved_study_instance_uid)
'
if [ "$(cat "$studies/uids" 2>/dev/null | wc -l)" != 2 ]; then
  rm -rf "$studies" && mkdir -p "$studies" && chmod 0777 "$studies"
  if python3 -c "import neuroseg" 2>/dev/null; then
    # neuroseg installed here (CI's virtual environment): no 2 GB container copy on a vfs daemon
    python3 -c "$write_studies" 1 "$data" "$studies" > "$studies/uids.new"
  else
    docker run --rm --network none --user "$(id -u):$(id -g)" -v "$data":/data:ro -v "$studies":/out \
      --entrypoint python "$image" -c "$write_studies" 1 /data /out > "$studies/uids.new"
  fi || fail "writing the studies failed"
  mv "$studies/uids.new" "$studies/uids"
fi
first_uid="$(awk '$1 == "first" {print $2}' "$studies/uids")"
second_uid="$(awk '$1 == "second" {print $2}' "$studies/uids")"

step "configuration (free ports, secrets)"
read -r SMOKE_LISTENER_PORT SMOKE_REDIS_PORT SMOKE_POSTGRES_PORT SMOKE_ORTHANC_DICOM_PORT \
  SMOKE_ORTHANC_HTTP_PORT SMOKE_ADMIN_PORT < <(python3 "$helper" ports 6)
export SMOKE_LISTENER_PORT SMOKE_REDIS_PORT SMOKE_POSTGRES_PORT SMOKE_ORTHANC_DICOM_PORT \
  SMOKE_ORTHANC_HTTP_PORT SMOKE_ADMIN_PORT
python3 "$helper" orthanc-config "$compose_dir/orthanc/orthanc.json" "$work/orthanc.json" \
  "$SMOKE_ORTHANC_DICOM_PORT" "$SMOKE_ORTHANC_HTTP_PORT" "$SMOKE_LISTENER_PORT"
chmod 0644 "$work/orthanc.json" && chmod 0755 "$work"
# Compose v1 (docker-py) also refuses published ports with the host's network, which v2
# ignores: its copy of compose.yaml goes without the top-level name and the ports.
awk '/^name:/ {next} /^    ports:$/ {skip=1; next} skip && /^      - / {next} {skip=0; print}' \
  "$compose_dir/compose.yaml" > "$work/compose.v1.yaml"
POSTGRES_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
NEUROSEG_ADMIN_TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
export POSTGRES_PASSWORD NEUROSEG_ADMIN_TOKEN
export NEUROSEG_IMAGE_TAG=smoke COMPOSE_PROFILES=cpu,trial
cpus=$(nproc); [ "$cpus" -gt 4 ] && cpus=4
export NEUROSEG_CPU_WORKER_CPUS="$cpus"  # compose.yaml's default of 4 is refused on a smaller host
env | grep -E '^(SMOKE_|NEUROSEG_IMAGE_TAG|COMPOSE_PROFILES)' > "$work/compose.env"
compose config -q || fail "the compose files do not validate"
orthanc="http://127.0.0.1:$SMOKE_ORTHANC_HTTP_PORT"
admin="http://127.0.0.1:$SMOKE_ADMIN_PORT"

step "stack up"
# creating a container copies its whole image on the vfs storage driver: minutes, not docker-py's 60 s
export COMPOSE_HTTP_TIMEOUT="${COMPOSE_HTTP_TIMEOUT:-900}"
up_started=$(date +%s)
services=(listener worker-cpu admin redis postgres orthanc)
compose up -d --no-build "${services[@]}" > "$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up failed"; }
healthy() {
  local service id state
  for service in "${services[@]}"; do
    id="$(compose ps -q "$service")"
    [ -n "$id" ] || { echo "$service: no container"; return; }
    state="$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")"
    case "$state" in
      "running healthy" | "running none") ;;
      *) echo "$service: $state"; return ;;
    esac
  done
  # the worker has no healthcheck: it is ready when Celery says so
  compose logs worker-cpu 2>&1 | grep "ready\." >/dev/null || { echo "worker-cpu: not ready"; return; }
  echo "all healthy"
}
wait_for 300 "^all healthy$" healthy >/dev/null || fail "not healthy after 300 s: $(healthy)"
healthy_seconds=$(( $(date +%s) - up_started ))
echo "stack healthy in $healthy_seconds s"

# Pushes study $1 into Orthanc with storescu (Orthanc's routing script sends it on to the listener).
push() {
  "$storescu" -aet SMOKE -aec ORTHANC +sd +r 127.0.0.1 "$SMOKE_ORTHANC_DICOM_PORT" "$studies/$1" \
    > "$work/storescu-$1.log" 2>&1 || { tail -n 20 "$work/storescu-$1.log"; fail "storescu of the $1 study failed"; }
}
results_complete() {
  local kinds
  kinds="$(python3 "$helper" results "$orthanc" "$1")"
  echo "$kinds $(python3 "$helper" job "$admin" "$NEUROSEG_ADMIN_TOKEN" "$1")"
}
complete_pattern='PM=[0-9]+ SEG=[0-9]+ SR=[0-9]+ [0-9]+ done [0-9]+$'
# Waits until study $1's job is done and its results are in Orthanc; stops early on a final failure.
wait_study() {
  local deadline=$(( $(date +%s) + study_timeout )) out
  while true; do
    out="$(results_complete "$1" 2>&1 || true)"
    if [[ "$out" =~ $complete_pattern ]]; then echo "$out"; return 0; fi
    if [[ "$out" =~ \ (failed|partial|cancelled)\ [0-9]+$ ]]; then echo "$out"; return 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "$out"; return 1; fi
    sleep 5
  done
}

step "first study: storescu -> Orthanc -> listener -> worker -> Orthanc"
trip_started=$(date +%s)
push first
out="$(wait_study "$first_uid")" \
  || fail "no finished job with SEG, Parametric Map and SR in Orthanc (after at most $study_timeout s; last: $out)"
round_trip=$(( $(date +%s) - trip_started ))
echo "results in Orthanc: $out (round trip $round_trip s)"

step "second study, worker killed while it runs"
trip2_started=$(date +%s)
push second
out="$(wait_for "$study_timeout" " (loading|preprocessing|inference|explaining|encoding) [0-9]+$" \
  python3 "$helper" job "$admin" "$NEUROSEG_ADMIN_TOKEN" "$second_uid")" \
  || fail "the second study's job never ran (last: $out)"
echo "job running ($out): restarting worker-cpu with SIGKILL"
compose restart -t 0 worker-cpu >/dev/null 2>&1 || fail "restarting the worker failed"
out="$(wait_study "$second_uid")" \
  || fail "the second study did not complete after the worker restart (last: $out)"
read -r _ _ _ jobs state attempts <<<"$out"
[ "$jobs" = 1 ] || fail "the second study has $jobs jobs, not exactly one"
[ "$attempts" -ge 2 ] || fail "the job ran $attempts time(s): the restart did not interrupt it"
echo "results in Orthanc: $out: one job, $attempts attempts ($(( $(date +%s) - trip2_started )) s)"

step "tear down"
disk_mb=$(( ($(disk_used_kb) - used_at_start_kb) / 1024 ))
compose down -v --remove-orphans >/dev/null 2>&1 || fail "compose down failed"
rm -f "$work/compose.env"
echo "SMOKE OK: image $(( image_size / 1000000 )) MB (built in $build_seconds s, 0: reused)," \
  "stack healthy in $healthy_seconds s, round trip of a study $round_trip s," \
  "disk used on the $storage_driver driver $disk_mb MB," \
  "total $(( $(date +%s) - started )) s"
