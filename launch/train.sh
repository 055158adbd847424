#!/usr/bin/env bash
# Trains locally, on several local processes, on a Cloud TPU pod or on a SLURM cluster; see
# docs/scaling.md. With no arguments: the offline default (iCT on the bundled digits), then a
# checkpoint, a grid of 1- and 2-step samples and their quality figure.
#
#   bash launch/train.sh [TARGET] [--dry_run] [--config=configs/X.py:method=M] [--workdir=DIR]
#                        [--config.a.b=v ...] [-- more args for python -m cm_jax.train]
#   bash launch/train.sh [TARGET] --cli=sample|evaluate|edit [--workdir=DIR] [its flags ...]
#        runs that CLI instead of training, the same way on every process (multi-host sampling,
#        FID and editing: each process computes its devices' share, process 0 writes).
# TARGET (default: one local process over every local device):
#   --num_processes=K [--cpu_devices=D | --gpus_per_process=G] [--coordinator_port=P]
#        K processes on this machine, jax.distributed over localhost (CPU: gloo collectives);
#        --cpu_devices forces D CPU devices per process, --gpus_per_process gives each process
#        its own G GPUs. Logs: WORKDIR/logs/process_I.log (process 0 also on the terminal; with
#        a gs:// workdir written to ./logs and copied there when the processes end).
#   --slurm [--gpus_per_node=G] [--nodes=N]   (implied when SLURM_JOB_ID is set)
#        srun: one process per GPU on every node; jax.distributed discovers the cluster.
#        Logs: WORKDIR/logs/slurm-JOB-TASK.log (./logs with a gs:// workdir).
#   --tpu=NAME --zone=Z [--project=P]
#        copies this checkout to every worker of the TPU VM, makes a Python 3.11 environment there
#        with uv, installs cm_jax[tpu] into it, and starts the same command on all workers
#        (gcloud compute tpus tpu-vm ssh --worker=all). --workdir must be gs://... or an absolute
#        path every worker shares (a gcsfuse or Filestore mount). Logs: WORKDIR/logs/worker-N.log; worker
#        0's output also here. TFDS_DATA_DIR, LIBTPU_INIT_ARGS, XLA_FLAGS and CM_JAX_PROGRESS,
#        when set here, are passed on.
# Exit status (also of python -m cm_jax.train): 0 finished or already complete; 2 a mistake in
# the flags, config or workdir (nothing written); 75 stopped by SIGTERM / Ctrl-C after saving a
# checkpoint: run the same command to resume (schedulers requeue on it); else a failure.
# --dry_run prints every command instead of running it. Flags this script does not know (and all
# after `--`) go to `python -m cm_jax.train`. CM_JAX_PYTHON=/path/to/python uses that interpreter
# as it is, instead of creating or updating the .venv (launch/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root="$(pwd)"

die() { echo "error: $*" >&2; exit 2; }

config="configs/digits.py:method=ict"; config_given=0
workdir="runs/digits_ict"; workdir_given=0
cli_name="train"
target=""; dry_run=0
num_processes=""; cpu_devices=""; gpus_per_process=""; coordinator_port=""
tpu=""; zone=""; project=""; gpus_per_node=""; nodes=""
args=()
while (($#)); do
  arg="$1"; shift
  case "$arg" in
    --) args+=("$@"); break ;;
    --config=*) config="${arg#--config=}"; config_given=1 ;;
    --workdir=*) workdir="${arg#--workdir=}"; workdir_given=1 ;;
    --cli=*) cli_name="${arg#--cli=}" ;;
    --dry_run|--dry-run) dry_run=1 ;;
    --num_processes=*) num_processes="${arg#*=}"; target="${target:+$target,}local" ;;
    --cpu_devices=*) cpu_devices="${arg#*=}" ;;
    --gpus_per_process=*) gpus_per_process="${arg#*=}" ;;
    --coordinator_port=*) coordinator_port="${arg#*=}" ;;
    --slurm) target="${target:+$target,}slurm" ;;
    --gpus_per_node=*) gpus_per_node="${arg#*=}" ;;
    --nodes=*) nodes="${arg#*=}" ;;
    --tpu=*) tpu="${arg#*=}"; target="${target:+$target,}tpu" ;;
    --zone=*) zone="${arg#*=}" ;;
    --project=*) project="${arg#*=}" ;;
    --num_processes|--cpu_devices|--gpus_per_process|--coordinator_port|--gpus_per_node|--nodes|--tpu|--zone|--project|--config|--workdir|--cli)
      die "$arg needs a value: write $arg=VALUE" ;;
    *) args+=("$arg") ;;
  esac
done
if [[ -z "$target" && -n "${SLURM_JOB_ID:-}" ]]; then
  target="slurm"
  echo "SLURM_JOB_ID=$SLURM_JOB_ID is set: launching with srun (inside the allocation)." >&2
fi
[[ "$target" == *,* ]] && die "choose one target, not ${target//,/ and } (--num_processes, --slurm, --tpu)"
is_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
[[ -n "$zone$project" && "$target" != tpu ]] && die "--zone and --project are for --tpu=NAME"
[[ -n "$cpu_devices$gpus_per_process$coordinator_port" && "$target" != local ]] &&
  die "--cpu_devices, --gpus_per_process and --coordinator_port are for --num_processes=K"
[[ -n "$gpus_per_node$nodes" && "$target" != slurm ]] && die "--gpus_per_node and --nodes are for --slurm"

case "$cli_name" in
  train)
    train_cmd=(-m cm_jax.train "--config=$config" "--workdir=$workdir" "${args[@]+"${args[@]}"}")
    what="Training --config=$config --workdir=$workdir" ;;
  sample|evaluate|edit)
    ((config_given)) && die "--config is for training; cm_jax.$cli_name reads the workdir's own config"
    train_cmd=(-m "cm_jax.$cli_name")
    ((workdir_given)) && train_cmd+=("--workdir=$workdir")
    train_cmd+=("${args[@]+"${args[@]}"}")
    ((workdir_given)) || workdir="."  # logs under ./logs (evaluate --samples has no workdir)
    what="Running cm_jax.$cli_name ${train_cmd[*]:2}" ;;
  *) die "--cli=$cli_name: choose train (the default), sample, evaluate or edit" ;;
esac
logdir="$workdir/logs"

# Shell-quotes each argument (single quotes where needed), space-separated.
quoted() {
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
# Prints a command (shell-quoted) in dry runs, runs it otherwise.
run() {
  if ((dry_run)); then quoted "$@"; else "$@"; fi
}

python_env() {  # sets $py: the interpreter that runs cm_jax.train here
  if [[ -n "${CM_JAX_PYTHON:-}" ]]; then
    py="$CM_JAX_PYTHON"
  elif ((dry_run)); then
    echo "source launch/env.sh"
    py=python
  else
    # shellcheck disable=SC1091
    source launch/env.sh
    py=python
  fi
}

case "$target" in
"")  # one local process over every local device (the default run)
  python_env
  echo "$what"
  if [[ "$cli_name" == train && "$config" == "configs/digits.py:method=ict" && ${#args[@]} -eq 0 ]]; then
    # Measured on 2-core machines of this project's kind (README): they differ by up to ~1.7x.
    echo "The default takes ~3-6 minutes of training on 2 CPU cores, then ~20 s to score its samples;"
    echo "the log prints the expected time once the step is compiled."
  fi
  if ((dry_run)); then run "$py" "${train_cmd[@]}"; exit 0; fi
  exec "$py" "${train_cmd[@]}"
  ;;

local)  # K processes on this machine
  is_int "$num_processes" || die "--num_processes must be a positive integer, got '$num_processes'"
  [[ -z "$cpu_devices" ]] || is_int "$cpu_devices" || die "--cpu_devices must be a positive integer, got '$cpu_devices'"
  [[ -z "$gpus_per_process" ]] || is_int "$gpus_per_process" || die "--gpus_per_process must be a positive integer, got '$gpus_per_process'"
  [[ -n "$cpu_devices" && -n "$gpus_per_process" ]] && die "give --cpu_devices or --gpus_per_process, not both"
  python_env
  if [[ -z "$coordinator_port" ]]; then
    if ((dry_run)); then coordinator_port=12355; else
      coordinator_port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
    fi
  fi
  is_int "$coordinator_port" || die "--coordinator_port must be a port number, got '$coordinator_port'"
  # A bucket takes no shell redirection: with a gs:// workdir the logs are written to ./logs
  # here and copied into the workdir when the processes end.
  logs_here="$logdir"
  [[ "$workdir" == gs://* ]] && logs_here="logs"
  echo "$what on $num_processes local processes (coordinator localhost:$coordinator_port); logs in $logs_here/process_*.log"
  run mkdir -p "$logs_here"
  pids=()
  for ((i = 0; i < num_processes; i++)); do
    env_vars=(CM_JAX_DISTRIBUTED=1 "CM_JAX_COORDINATOR=localhost:$coordinator_port"
              "CM_JAX_NUM_PROCESSES=$num_processes" "CM_JAX_PROCESS_ID=$i")
    if [[ -n "$cpu_devices" ]]; then
      env_vars+=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$cpu_devices")
    elif [[ -n "$gpus_per_process" ]]; then
      env_vars+=("CUDA_VISIBLE_DEVICES=$(seq -s, $((i * gpus_per_process)) $(((i + 1) * gpus_per_process - 1)))")
    fi
    log="$logs_here/process_$i.log"
    if ((dry_run)); then
      echo "$(quoted env "${env_vars[@]}" "$py" "${train_cmd[@]}") > $(quoted "$log") 2>&1 &"
      continue
    fi
    if ((i == 0)); then
      env "${env_vars[@]}" "$py" "${train_cmd[@]}" > >(tee "$log") 2>&1 &
    else
      env "${env_vars[@]}" "$py" "${train_cmd[@]}" > "$log" 2>&1 &
    fi
    pids+=($!)
  done
  copy_logs() {  # a gs:// workdir: ./logs into the bucket
    [[ "$logs_here" != "$logdir" ]] || return 0
    for ((i = 0; i < num_processes; i++)); do
      run "$py" -m cm_jax.storage put "$logs_here/process_$i.log" "$logdir/process_$i.log" ||
        echo "launch/train.sh: could not copy $logs_here/process_$i.log to $logdir/" >&2
    done
  }
  ((dry_run)) && { echo "wait"; copy_logs; exit 0; }
  # Preemption: forward SIGTERM / Ctrl-C to every process; jax.distributed's preemption sync
  # point then makes them all save the same step and exit.
  forward() { echo "launch/train.sh: forwarding SIG$1 to processes ${pids[*]}" >&2
              kill -TERM "${pids[@]}" 2>/dev/null || true; }
  trap 'forward TERM' TERM
  trap 'forward INT' INT
  status=0; alive=("${pids[@]}")
  while ((${#alive[@]})); do
    still=()
    for p in "${alive[@]}"; do
      if kill -0 "$p" 2>/dev/null; then still+=("$p"); continue; fi
      rc=0; wait "$p" || rc=$?
      if ((rc == 75)); then
        ((status == 0)) && status=75  # stopped after saving: the others stop at the same step
      elif ((rc != 0 && (status == 0 || status == 75))); then
        status=$rc
        echo "launch/train.sh: process $p exited with $rc; stopping the others (see $logdir/)" >&2
        for q in "${pids[@]}"; do kill -TERM "$q" 2>/dev/null || true; done
        ( sleep 30; for q in "${pids[@]}"; do kill -KILL "$q" 2>/dev/null || true; done ) &
      fi
    done
    alive=("${still[@]+"${still[@]}"}")
    ((${#alive[@]})) && sleep 0.5
  done
  copy_logs
  exit "$status"
  ;;

slurm)
  if ((!dry_run)); then
    command -v srun > /dev/null || die "--slurm needs srun on PATH (run on a SLURM login node or inside an allocation)"
  fi
  gpus="${gpus_per_node:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}}"
  gpus="${gpus##*:}"  # SLURM_GPUS_PER_NODE may read 'a100:8'
  is_int "$gpus" || die "cannot tell the GPUs per node (no SLURM_GPUS_ON_NODE): pass --gpus_per_node=G"
  nodes="${nodes:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}"
  is_int "$nodes" || die "--nodes must be a positive integer, got '$nodes'"
  python_env
  # srun writes its --output files itself: with a gs:// workdir they go to ./logs here.
  [[ "$workdir" == gs://* ]] && logdir="logs"
  echo "$what on $nodes node(s) x $gpus GPU(s), one process per GPU; logs in $logdir/"
  run mkdir -p "$logdir"
  # JAX's SLURM detection gives process i GPU SLURM_LOCALID of its node: every task sees the
  # node's GPUs (--gpus-per-node, no per-task binding).
  run srun "--nodes=$nodes" "--ntasks-per-node=$gpus" "--gpus-per-node=$gpus" --kill-on-bad-exit=1 \
    "--output=$logdir/slurm-%j-%t.log" \
    env CM_JAX_DISTRIBUTED=1 "$py" "${train_cmd[@]}"
  ;;

tpu)
  [[ -n "$tpu" ]] || die "--tpu needs a name: --tpu=NAME --zone=ZONE"
  [[ -n "$zone" ]] || die "--tpu=$tpu needs --zone=ZONE (the TPU VM's zone, e.g. us-central2-b)"
  # Every worker runs the same command and must see the same workdir (checkpoints, config.json,
  # logs): a relative path would resolve on each worker's own disk. (evaluate --samples=FILE
  # has no workdir: its logs stay in ./logs on each worker.)
  case "$workdir" in
    gs://*|/*) ;;
    .) [[ "$cli_name" != train ]] || die "--tpu needs --workdir" ;;
    *) die "--tpu needs a workdir every worker shares: gs://BUCKET/runs/NAME or an absolute path on a shared mount (Filestore, gcsfuse); '$workdir' would resolve on each worker's own disk" ;;
  esac
  if ((!dry_run)); then
    command -v gcloud > /dev/null || die "--tpu needs the gcloud CLI (https://cloud.google.com/sdk/docs/install), logged in with 'gcloud auth login'"
  fi
  where=(--worker=all "--zone=$zone")
  [[ -n "$project" ]] && where+=("--project=$project")
  bundle="${TMPDIR:-/tmp}/cm_jax_code_$$.tgz"
  ((dry_run)) || trap 'rm -f "$bundle"' EXIT
  remote_dir='~/cm_jax'
  echo "$what on TPU VM $tpu ($zone); worker logs in $logdir/"
  # 1. This checkout (without environments, runs or git history) to every worker.
  run tar -czf "$bundle" --exclude=./.venv --exclude=./.git --exclude=./runs --exclude=./logs --exclude=./.whl \
    --exclude='*/__pycache__' .
  run gcloud compute tpus tpu-vm scp "$bundle" "$tpu:cm_jax_code.tgz" "${where[@]}"
  # 2. On every worker: Python >= 3.11 in its own environment (the TPU VM images' python3 is
  #    3.10 on Ubuntu 22.04), made by uv, and cm_jax[tpu] installed into it from the copied tree.
  setup="mkdir -p $remote_dir && tar -xzf ~/cm_jax_code.tgz -C $remote_dir && cd $remote_dir"
  setup+=" && (python3 -m uv --version > /dev/null 2>&1 || python3 -m pip install --user --quiet uv)"
  setup+=" && (test -x .venv/bin/python || python3 -m uv venv --quiet --python 3.11 .venv)"
  setup+=" && python3 -m uv pip install --quiet --python .venv/bin/python -e '.[tpu]'"
  run gcloud compute tpus tpu-vm ssh "$tpu" "${where[@]}" "--command=$setup"
  # 3. The same command on every worker at once; jax.distributed finds the pod by itself. Each
  #    worker logs to the shared workdir; worker 0's output also comes back here.
  envs=(CM_JAX_DISTRIBUTED=1)
  for name in TFDS_DATA_DIR LIBTPU_INIT_ARGS XLA_FLAGS CM_JAX_PROGRESS; do
    [[ -n "${!name:-}" ]] && envs+=("$name=${!name}")
  done
  worker='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
  train="env $(quoted "${envs[@]}") .venv/bin/python $(quoted "${train_cmd[@]}")"
  if [[ "$workdir" == gs://* ]]; then
    # No shell redirection reaches a bucket: each worker logs to its own disk, and the log is
    # copied to the workdir when the run ends (whatever its exit status, which is kept).
    log="logs/worker-\$w.log"
    upload="; rc=\$?; .venv/bin/python -m cm_jax.storage put $log $(quoted "$logdir")/worker-\$w.log; exit \$rc"
    logs_at="logs"
  else
    log="$(quoted "$logdir")/worker-\$w.log"
    upload=""
    logs_at="$(quoted "$logdir")"
  fi
  remote="set -o pipefail; cd $remote_dir && mkdir -p $logs_at && w=$worker && if [ \"\$w\" = 0 ]; then $train 2>&1 | tee $log; else $train > $log 2>&1; fi$upload"
  if ((dry_run)); then
    echo "$(quoted gcloud compute tpus tpu-vm ssh "$tpu" "${where[@]}" "--command=$remote")"
  else
    gcloud compute tpus tpu-vm ssh "$tpu" "${where[@]}" "--command=$remote"
  fi
  ;;
esac
