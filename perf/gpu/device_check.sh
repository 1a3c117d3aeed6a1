#!/usr/bin/env bash
# On the GPU machine: build proteus against a Kokkos install (unpacked from .gpu/kinstall.tar.gz
# when /tmp/kinstall is missing), run the whole ctest suite, then the benchmarks given as
# arguments ("module", "pipeline"). Logs go to $OUT. The build goes to GPU_BUILD (default /tmp/bgpu); a
# folder under the repository (build_gpu/, ignored by git) outlives the call on a machine kept warm, so
# that the next call can pass SKIP_BUILD=1. BUILD_TARGETS="bench_module proteus_python_core" builds only
# those (a benchmark call without ctest). PACK=1 packs $OUT into one results.tgz at the end.
set -uo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=${OUT:-/tmp/out}
mkdir -p "$out"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Kokkos and Kokkos Kernels: unpacked from .gpu/kinstall.tar.gz, or, in a checkout without one, built
# from the source trees packed in .gpu/ksrc.tar.gz (kokkos/ and kokkos-kernels/) and packed into
# $out/kinstall.tar.gz for the next calls to carry (KOKKOS_NO_ETI=1: build.sh --no-eti).
if [ ! -d /tmp/kinstall ] && [ -f "$root/.gpu/kinstall.tar.gz" ]; then
  tar xzf "$root/.gpu/kinstall.tar.gz" -C /tmp
elif [ ! -d /tmp/kinstall ]; then
  [ -f "$root/.gpu/ksrc.tar.gz" ] || { echo "device_check: neither .gpu/kinstall.tar.gz nor .gpu/ksrc.tar.gz"; exit 1; }
  mkdir -p /tmp/ksrc && tar xzf "$root/.gpu/ksrc.tar.gz" -C /tmp/ksrc
  eti=()
  [ -n "${KOKKOS_NO_ETI:-}" ] && eti=(--no-eti)
  start=$(date +%s)
  if ! bash "$root/perf/gpu/build.sh" --kokkos-src /tmp/ksrc/kokkos --kernels-src /tmp/ksrc/kokkos-kernels \
       --prefix /tmp/kinstall --build /tmp/kbuild --jobs "$(nproc)" --kokkos-only "${eti[@]}" >"$out/kokkos_build.log" 2>&1; then
    grep -E "error" -A3 "$out/kokkos_build.log" | head -40
    exit 1
  fi
  tar czf "$out/kinstall.tar.gz" -C /tmp kinstall
  echo "== Kokkos and Kokkos Kernels built in $(( $(date +%s) - start )) s (${eti[*]:-with instantiations})"
fi
# The commit the binaries report: the copy's .git may be stale, so .gpu/commit (written before the
# call: git rev-parse --short HEAD > .gpu/commit, with "+changes" when the tree is dirty) wins.
[ -f "$root/.gpu/commit" ] && export PROTEUS_GIT_COMMIT="$(cat "$root/.gpu/commit")"
# The PyTorch extension too, where python3 has torch and pybind11 (it needs a Kokkos built with -fPIC).
python=()
python3 -c "import torch, pybind11, h5py, pytest" 2>/dev/null && python=(-- -DPROTEUS_ENABLE_PYTHON=ON)
targets=()
for t in ${BUILD_TARGETS:-}; do targets+=(--target "$t"); done
build=${GPU_BUILD:-/tmp/bgpu}
if [ -n "${SKIP_BUILD:-}" ]; then  # an earlier call of this script built it
  [ -x "$build/proteus/drivers/proteus_driver" ] || { echo "SKIP_BUILD: no build in $build"; exit 1; }
elif ! bash "$root/perf/gpu/build.sh" --kokkos-root /tmp/kinstall --build "$build" --jobs 16 "${targets[@]}" "${python[@]}" >"$out/build.log" 2>&1; then
  grep -E "error" -A3 "$out/build.log" | head -60
  exit 1
fi
echo "== build ok"
bin=$build/proteus
# bench_module's training step at the Python benchmarks' shapes, with and without deferred statistics.
cpp_training_steps() {
  for defer in "" "--defer-statistics"; do
    "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 524288 --alphas 1.0 \
      --warmup 1 --repeat 11 --token-sparse --backward $defer
  done
}
for step in "$@"; do
  case "$step" in
    ctest)
      (cd "$bin" && ctest -j4 --output-on-failure --timeout 300 >"$out/ctest.log" 2>&1)
      grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest.log" | tail -15 ;;
    ctest_python)
      (cd "$bin" && ctest -L python -j4 --output-on-failure --timeout 300 >"$out/ctest_python.log" 2>&1)
      grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest_python.log" | tail -15 ;;
    module)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 524288 1048576 \
        --alphas 1.0 --warmup 2 --repeat 5 --csv "$out/module_alpha1.csv" | tee "$out/module.txt" ;;
    profile)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 1 --repeat 3 \
        --profile | tee "$out/profile.txt" ;;
    profile_small)
      # Fixed costs at small T: kernel times, and per call the kernels, deep copies and allocations.
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 --alphas 1.0 --warmup 2 \
        --repeat 5 --token-sparse --profile | tee "$out/profile_small.txt" ;;
    ncu_time)
      # GPU time of every kernel (Kokkos and cuBLAS) of one forward at 32k with token sparsity.
      ncu --csv --metrics gpu__time_duration.sum "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 \
        --tokens 32768 --alphas 1.0 --warmup 1 --repeat 1 --token-sparse >"$out/ncu_time_32k.csv" 2>"$out/ncu_time.err"
      tail -3 "$out/ncu_time.err" ;;
    ncu_time_1m)
      # GPU time of every kernel (Kokkos and cuBLAS) of one forward at 1M tokens with token sparsity
      # (warm-up 0, so the first call's one-off kernels show too): FP32, TF32 + BF16 K|V, and BF16
      # projections + BF16 K|V, each summed by perf/ncu_kernels.py.
      for mode in fp32 tf32_kvbf16 bf16_kvbf16; do
        flags=""
        [ "$mode" = tf32_kvbf16 ] && flags="--tf32 --kv-bf16"
        [ "$mode" = bf16_kvbf16 ] && flags="--bf16 --kv-bf16"
        ncu --csv --kernel-name-base demangled --metrics gpu__time_duration.sum "$bin/perf/bench_module" --embed 512 \
          --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 0 --repeat 1 --token-sparse $flags \
          >"$out/ncu_time_1m_$mode.csv" 2>"$out/ncu_time_1m.err"
        echo "== $mode"; python3 "$root/perf/ncu_kernels.py" "$out/ncu_time_1m_$mode.csv" --top 40 | tee "$out/ncu_time_1m_$mode.txt"
      done ;;
    module_sparse)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 65536 131072 524288 1048576 \
        --alphas 1.0 --warmup 2 --repeat 5 --token-sparse --csv "$out/module_alpha1_sparse.csv" | tee "$out/module_sparse.txt" ;;
    module_sparse_dna)
      # As module_sparse, with the DNA EMA updating on every call (upstream's harness does so).
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 65536 131072 524288 1048576 \
        --alphas 1.0 --warmup 2 --repeat 5 --token-sparse --dna-update --csv "$out/module_alpha1_sparse_dna.csv" \
        | tee "$out/module_sparse_dna.txt" ;;
    module_sparse_tf32)
      # As module_sparse, with the projection GEMMs on TF32 tensor cores (--tf32).
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 65536 131072 524288 1048576 \
        --alphas 1.0 --warmup 2 --repeat 5 --token-sparse --tf32 --csv "$out/module_alpha1_sparse_tf32.csv" \
        | tee "$out/module_sparse_tf32.txt" ;;
    kv_bf16)
      # Issue 20 item 1: keys and values in BF16 (--kv-bf16) with FP32 and with TF32 projections,
      # 4k-1M, then every kernel at 1M (the attention's time against module_sparse's).
      for p in "" "--tf32"; do
        "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 524288 1048576 \
          --alphas 1.0 --warmup 2 --repeat 5 --token-sparse --kv-bf16 $p
      done | tee "$out/kv_bf16.txt"
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 1 \
        --repeat 3 --token-sparse --kv-bf16 --profile | tee -a "$out/kv_bf16.txt" ;;
    bf16)
      # Issue 20 item 1: projection GEMMs on BF16 tensor cores (--bf16), with K|V in FP32 and in
      # BF16, 4k-1M, then every kernel of the all-BF16 call at 1M.
      for p in "" "--kv-bf16"; do
        "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 524288 1048576 \
          --alphas 1.0 --warmup 2 --repeat 5 --token-sparse --bf16 $p
      done | tee "$out/bf16.txt"
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 1 \
        --repeat 3 --token-sparse --bf16 --kv-bf16 --profile | tee -a "$out/bf16.txt" ;;
    profile_small_tf32)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 --alphas 1.0 --warmup 2 \
        --repeat 5 --token-sparse --tf32 --profile | tee "$out/profile_small_tf32.txt" ;;
    profile_sparse)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 1048576 --alphas 1.0 --warmup 1 --repeat 3 \
        --token-sparse --profile | tee "$out/profile_sparse.txt" ;;
    ncu)
      # Every kernel of one forward at 131k tokens (upstream's config: token sparsity on): time,
      # DRAM bytes, FP32 instructions and SM/memory throughput against the device's peaks.
      ncu --csv --metrics gpu__time_duration.sum,dram__bytes.sum,smsp__sass_thread_inst_executed_op_ffma_pred_on.sum,smsp__sass_thread_inst_executed_op_fadd_pred_on.sum,smsp__sass_thread_inst_executed_op_fmul_pred_on.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__t_bytes.sum \
        "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 131072 --alphas 1.0 --warmup 0 --repeat 1 \
        --token-sparse >"$out/ncu_131k.csv" 2>"$out/ncu_131k.err"; tail -3 "$out/ncu_131k.err" ;;
    ncu_attention)
      # Launch configuration, occupancy and its limiters, throughput of the two attention kernels
      # of one forward at 131k tokens with token sparsity.
      ncu --csv --page details --section LaunchStats --section Occupancy --section SpeedOfLight \
        --kernel-name-base demangled -k regex:attend_ "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 \
        --tokens 131072 --alphas 1.0 --warmup 0 --repeat 1 --token-sparse >"$out/ncu_attention_131k.csv" 2>"$out/ncu_attention.err"
      tail -3 "$out/ncu_attention.err"
      grep -E "Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Block Limit|Block Size|Grid Size|Duration|Shared Memory Configuration Size|Dynamic Shared" \
        "$out/ncu_attention_131k.csv" | cut -c1-400 ;;
    ncu_stalls)
      # Why the attention waits: warp states (stall reasons), scheduler issue rate, memory workload
      # (L1/L2 wavefronts and hit rates) and instruction mix of the attention kernels of one forward
      # at STALL_TOKENS (default 1048576) with token sparsity; FP32 K|V, then BF16 K|V. STALL_KERNELS
      # (a regex on the demangled names, default attend_) picks other kernels; STALL_FP32_ONLY=1
      # skips the BF16 K|V forward.
      kv_modes=("" "--kv-bf16")
      [ -n "${STALL_FP32_ONLY:-}" ] && kv_modes=("")
      for kv in "${kv_modes[@]}"; do
        ncu --csv --page details --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
          --section MemoryWorkloadAnalysis_Tables --section InstructionStats --section Occupancy --section SpeedOfLight \
          --section LaunchStats --kernel-name-base demangled -k "regex:${STALL_KERNELS:-attend_}" \
          "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 \
          --tokens "${STALL_TOKENS:-1048576}" --alphas 1.0 --warmup 0 --repeat 1 --token-sparse $kv \
          >"$out/ncu_stalls${kv:+_bf16}.csv" 2>"$out/ncu_stalls${kv:+_bf16}.err"
        tail -2 "$out/ncu_stalls${kv:+_bf16}.err"
        python3 "$root/perf/ncu_details.py" "$out/ncu_stalls${kv:+_bf16}.csv"
      done ;;
    pipeline_sweep)
      python3 "$root/perf/bench_pipeline.py" "$bin/drivers/proteus_driver" "$root/inputs/ctx10m.in" \
        --tokens 1000000 4000000 10000000 --device "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
        --csv "$out/pipeline.csv" | tee "$out/pipeline.txt" ;;
    weak_scaling)
      # 10M tokens per rank on 1 and 2 ranks; on a 2-GPU machine each rank takes its own GPU
      # (Kokkos maps devices by local rank), on a 1-GPU machine the ranks share it.
      nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$out/weak_scaling.txt"
      for np in 1 2; do
        python3 "$root/perf/bench_pipeline.py" "$bin/drivers/proteus_driver" "$root/inputs/ctx10m.in" \
          --tokens $((np * 10000000)) --np $np --device "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
          --csv "$out/weak_np$np.csv" | tee -a "$out/weak_scaling.txt"
      done ;;
    pipeline_100m)
      # Issue 20 item 4: 100M tokens of ctx10m.in's shape over one rank per GPU of the machine.
      gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
      python3 "$root/perf/bench_pipeline.py" "$bin/drivers/proteus_driver" "$root/inputs/ctx10m.in" \
        --tokens 100000000 --np "$gpus" --set sequence.needles=640 \
        --device "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x$gpus" \
        --csv "$out/pipeline_100m.csv" | tee "$out/pipeline_100m.txt" ;;
    nsys_pipeline)
      mkdir -p /tmp/run && cd /tmp/run && nsys profile -o /tmp/run/pipe --force-overwrite true --stats=true \
        "$bin/drivers/proteus_driver" -q "$root/inputs/ctx10m.in" --set checkpoint.at_end=false \
        --set checkpoint.interval_chunks=0 >"$out/nsys_pipeline.txt" 2>&1; tail -2 "$out/nsys_pipeline.txt" ;;
    upstream)
      # Upstream ASPA through its own tinytoy harness (autotune on), BF16 then FP32, same device call.
      for prec in "" "--cuda-fp32"; do
        (cd "$root/.gpu/upstream/src" && timeout 300 python3 -m proteus_attention.kernels.tinytoy --device cuda \
          --max-seq-len 524288 --disable-standard --disable-int8 --skip-probe --no-save --no-plot $prec) \
          >>"$out/upstream.txt" 2>&1
      done
      grep -E "^[0-9]+ +\| ASPA" "$out/upstream.txt" ;;
    sdpa)
      # PyTorch causal SDPA on the same 32 x 16 shapes, BF16 to 1M and FP32 to 131k.
      python3 "$root/perf/gpu/sdpa.py" --tokens 4096 32768 131072 524288 1048576 --csv "$out/sdpa.csv" \
        | tee "$out/sdpa.txt" ;;
    training)
      # A training step (run_training + backward) at upstream's tinytoy shape with token sparsity,
      # next to the forward alone, in one call.
      for mode in "" "--backward"; do
        "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 131072 524288 1048576 \
          --alphas 1.0 --warmup 1 --repeat 3 --token-sparse --budget 20 $mode --csv "$out/training${mode:+_step}.csv"
      done | tee "$out/training.txt" ;;
    upstream_training)
      # Upstream's trainable path (its PyTorch fallback, Triton off) at the tinytoy shape: forward + backward.
      python3 "$root/perf/gpu/upstream_training.py" --upstream "$root/.gpu/upstream/src" \
        --tokens 4096 32768 131072 524288 --repeat 2 --budget 15 --csv "$out/upstream_training.csv" | tee "$out/upstream_training.txt" ;;
    train_curriculum)
      # examples/train_sliding_ctx.py with proteus and with dense attention side by side, one GPU
      # each (TRAIN_STEPS, TRAIN_MINUTES), on the pinned corpus carried as .gpu/corpus.npz.
      runs=/tmp/runs; mkdir -p $runs
      for attention in proteus dense; do
        gpu=0; [ $attention = dense ] && gpu=1
        CUDA_VISIBLE_DEVICES=$gpu PYTHONPATH=$bin/python python3 "$root/examples/train_sliding_ctx.py" \
          --attention $attention --steps "${TRAIN_STEPS:-2000}" --max-minutes "${TRAIN_MINUTES:-4.5}" \
          --eval-every 250 --log-every 100 --dna-every 250 --checkpoint-every 100000 \
          --corpus-pack "$root/.gpu/corpus.npz" --out $runs/$attention >$runs/$attention.log 2>&1 &
      done
      wait
      tail -4 $runs/proteus.log $runs/dense.log
      tar czf "$out/runs.tar.gz" --exclude=checkpoint.pt -C /tmp runs ;;
    train_one)
      # One curriculum run (TRAIN_ATTENTION: proteus, dense or dense-rope; TRAIN_STEPS, TRAIN_MINUTES; more
      # options in TRAIN_ARGS, a name for its files in TRAIN_NAME) on the first visible GPU.
      a=${TRAIN_ATTENTION:-proteus}; name=${TRAIN_NAME:-$a}; runs=/tmp/runs_$name; mkdir -p $runs
      PYTHONPATH=$bin/python python3 "$root/examples/train_sliding_ctx.py" --attention $a --steps "${TRAIN_STEPS:-2000}" \
        --max-minutes "${TRAIN_MINUTES:-4.5}" --eval-every 250 --log-every 100 --dna-every 250 --checkpoint-every 100000 \
        --corpus-pack "$root/.gpu/corpus.npz" --out $runs/$name ${TRAIN_ARGS:-} >$runs/$name.log 2>&1
      tail -3 $runs/$name.log
      tar czf "$out/train_$name.tar.gz" --exclude=checkpoint.pt -C /tmp runs_$name ;;
    facts)
      # issue 19, item 5: train proteus (TRAIN_STEPS, TRAIN_MINUTES), then run its last layer with the
      # driver on 1,000,000 and 10,000,000 bytes with planted facts, trained against random weights,
      # on 1 and 2 ranks (examples/long_context_facts.py); brings back the checkpoint and reports.
      runs=/tmp/runs; mkdir -p $runs
      PYTHONPATH=$bin/python python3 "$root/examples/train_sliding_ctx.py" --attention proteus \
        --steps "${TRAIN_STEPS:-1000}" --max-minutes "${TRAIN_MINUTES:-3}" --eval-every 250 --log-every 100 \
        --dna-every 250 --checkpoint-every 100000 --corpus-pack "$root/.gpu/corpus.npz" --out $runs/proteus \
        >$runs/proteus.log 2>&1
      tail -3 $runs/proteus.log
      for n in 1000000 10000000; do
        PYTHONPATH=$bin/python python3 "$root/examples/long_context_facts.py" --checkpoint $runs/proteus/checkpoint.pt \
          --driver "$bin/drivers/proteus_driver" --mpirun "mpirun --allow-run-as-root --oversubscribe" \
          --corpus-pack "$root/.gpu/corpus.npz" --bytes $n --out $runs/facts_$n 2>&1 | tail -25
        rm -f $runs/facts_$n/tokens.h5
      done
      tar czf "$out/facts.tar.gz" -C /tmp runs ;;
    training_profile)
      # Upstream's tinytoy shape: every Kokkos kernel of a forward and of a training step timed, and the
      # allocations alive at each one's peak memory.
      for mode in "" "--backward"; do
        "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 32768 524288 --alphas 1.0 --warmup 1 \
          --repeat 3 --token-sparse --profile --memory $mode
      done | tee "$out/training_profile.txt" ;;
    train_ddp)
      # issue 19: the curriculum (proteus) under torchrun on every GPU of the machine (NCCL data parallel).
      runs=/tmp/runs; mkdir -p $runs
      PYTHONPATH=$bin/python python3 -m torch.distributed.run --standalone --nproc_per_node "$(nvidia-smi -L | wc -l)" \
        "$root/examples/train_sliding_ctx.py" --attention proteus --steps "${TRAIN_STEPS:-2000}" \
        --max-minutes "${TRAIN_MINUTES:-4.5}" --eval-every 250 --log-every 100 --dna-every 250 \
        --checkpoint-every 100000 --corpus-pack "$root/.gpu/corpus.npz" --out $runs/ddp >$runs/ddp.log 2>&1
      tail -6 $runs/ddp.log
      tar czf "$out/ddp.tar.gz" --exclude=checkpoint.pt -C /tmp runs ;;
    training_small)
      # The shape of the curriculum's first phase (d 192, 8 heads, 512 tokens, batch 32, alpha 0):
      # a training step with every Kokkos kernel timed.
      "$bin/perf/bench_module" --embed 192 --heads 8 --gates 16 --tokens 512 --batch 32 --alphas 0.0 --warmup 1 \
        --repeat 3 --backward --profile | tee "$out/training_small.txt" ;;
    python_bench)
      # issue 18: the training step through the PyTorch extension (autograd, one thread, the compiled module
      # called as C++ calls it) and from C++ (bench_module, the same weights and input), in one call.
      PYTHONPATH=$bin/python python3 "$root/perf/bench_python.py" --tokens 4096 32768 131072 524288 --repeat 11 \
        --cases forward training-forward step step-one-thread core-step --csv "$out/python_bench.csv" | tee "$out/python_bench.txt"
      PYTHONPATH=$bin/python python3 "$root/perf/bench_python.py" --tokens 4096 32768 --side-stream --repeat 11 \
        --cases step core-step sdpa --sdpa-fp32-max 32768 --csv "$out/python_bench_side.csv" | tee -a "$out/python_bench.txt"
      cpp_training_steps | tee -a "$out/python_bench.txt" ;;
    python_overhead)
      # issue 18: where the Python step's extra time is: autograd, one thread, the compiled module, and
      # bench_module's loop run inside the Python process (with and without the Python forward's NaN
      # check), next to bench_module itself, on the same weights and input; then the forward alone.
      PYTHONPATH=$bin/python python3 "$root/perf/bench_python.py" --tokens 4096 32768 131072 524288 --repeat 11 \
        --cases step step-one-thread core-step cpp-loop --csv "$out/python_overhead.csv" | tee "$out/python_overhead.txt"
      cpp_training_steps | tee -a "$out/python_overhead.txt"
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 131072 524288 1048576 --alphas 1.0 \
        --warmup 2 --repeat 5 --token-sparse | tee -a "$out/python_overhead.txt" ;;
    short)
      # issue 20 item 3: T 512-4096, proteus against causal SDPA and a dense layer of the same precision
      # (one timing method: wall clock between synchronisations), then the C++ forward and training step
      # with their kernels, fences and allocations per call.
      PYTHONPATH=$bin/python python3 "$root/perf/bench_python.py" --tokens 512 1024 2048 4096 --repeat 21 \
        --cases forward step core-step sdpa --csv "$out/short_python.csv" | tee "$out/short.txt"
      for mode in "" "--backward"; do
        "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 512 1024 2048 4096 --alphas 1.0 \
          --warmup 2 --repeat 21 --token-sparse --profile $mode
      done | tee -a "$out/short.txt" ;;
    python_profile)
      # issue 18: where the Python step's extra time goes. The step through autograd, the same calls
      # into the compiled module without autograd, and the C++ step, at 4k and 32k in one call;
      # torch.profiler's tables (CPU and CUDA) of one autograd step per T.
      PYTHONPATH=$bin/python python3 "$root/perf/bench_python.py" --tokens 4096 32768 --cases step step-one-thread core-step \
        --repeat 21 --torch-profile "$out/torch_profile.txt" --csv "$out/python_profile.csv" | tee "$out/python_profile.txt"
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 4096 32768 --alphas 1.0 --warmup 1 \
        --repeat 21 --token-sparse --backward | tee -a "$out/python_profile.txt" ;;
    python_trace)
      # issue 18: torch.profiler's Chrome traces (CPU ops, CUDA runtime calls, kernels) of five steps
      # through autograd and through the compiled module at 4k and 32k, gzipped, to find the GPU's idle gaps.
      PYTHONPATH=$bin/python python3 "$root/perf/bench_python.py" --tokens 4096 32768 \
        --cases step step-one-thread core-step --repeat 21 --torch-trace "$out/trace" | tee "$out/python_trace.txt"
      tar czf "$out/traces.tar.gz" -C "$out" $(cd "$out" && ls trace_*.json) && rm -f "$out"/trace_*.json ;;
    train_step)
      # issue 19: the curriculum model's training step at each phase's context and batch, dense with
      # RoPE against proteus configurations (perf/bench_train_step.py), in one process: the script's
      # defaults and every head and token (k8) at L 512, 256 and 192. STEP_CONFIGS (NAME=ARGS items
      # separated by ';') replaces the proteus configurations.
      configs=("--config" "dense-rope=--attention dense-rope")
      k8="--attention proteus --heads-active 8:8 --proteus linear_head_k=8 --token-sparse 0"
      IFS=';' read -ra items <<<"${STEP_CONFIGS:-proteus=--attention proteus;k8-L512=$k8;k8-L256=$k8 --proteus linear_L=256;k8-L192=$k8 --proteus linear_L=192}"
      for item in "${items[@]}"; do configs+=("--config" "$item"); done
      PYTHONPATH=$bin/python python3 "$root/perf/bench_train_step.py" --csv "$out/train_step.csv" "${configs[@]}" \
        | tee "$out/train_step.txt" ;;
    k8_profile)
      # issue 19/20: the curriculum's phase-3 attention with every head and token (k8) at L 512 and
      # 128: every kernel of a forward and of a training step timed (what does not shrink with L),
      # with the allocations made per call by label (what still allocates and fences every step).
      for L in 512 128; do
        for mode in "" "--backward"; do
          "$bin/perf/bench_module" --embed 192 --heads 8 --gates 16 --tokens 16384 --batch 4 --alphas 1.0 \
            --heads-active-min 8 --linear-head-k 8 --linear-L $L --warmup 1 --repeat 3 --profile --memory $mode
        done
      done | tee "$out/k8_profile.txt" ;;
    sdpa_training)
      python3 "$root/perf/gpu/sdpa.py" --backward --tokens 4096 32768 131072 524288 --csv "$out/sdpa_training.csv" \
        | tee "$out/sdpa_training.txt" ;;
    module_sweep)
      "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens 512 4096 32768 131072 \
        --alphas 0.0 0.3 1.0 --warmup 1 --repeat 3 --budget 30 --csv "$out/module_sweep.csv" | tee "$out/module_sweep.txt" ;;
    pipeline)
      # ctx10m.in PIPELINE_REPEAT times (default 1); the last run's summary.json.
      for i in $(seq "${PIPELINE_REPEAT:-1}"); do
        mkdir -p /tmp/run && (cd /tmp/run && rm -rf ctx10m_out && "$bin/drivers/proteus_driver" -q \
          "$root/inputs/ctx10m.in" --set checkpoint.at_end=false --set checkpoint.interval_chunks=0) | tee -a "$out/ctx10m.txt"
      done
      cp /tmp/run/ctx10m_out/summary.json "$out/ctx10m_summary.json" 2>/dev/null ;;
    pipeline_startup)
      # ctx10m.in with MPI and Kokkos + cuBLAS started in sequence, side by side, and side by side with
      # the warm-up (PROTEUS_STARTUP, PROTEUS_WARMUP), PIPELINE_REPEAT times each (default 3), with the
      # process's wall time.
      for i in $(seq "${PIPELINE_REPEAT:-3}"); do
        for mode in sequential overlapped warm; do
          case $mode in
            sequential) env=(PROTEUS_STARTUP=sequential) ;;
            overlapped) env=(PROTEUS_STARTUP=overlapped PROTEUS_WARMUP=off) ;;
            warm) env=(PROTEUS_STARTUP=overlapped PROTEUS_WARMUP=on) ;;
          esac
          mkdir -p /tmp/run && (cd /tmp/run && rm -rf ctx10m_out && echo "== $mode" && time env "${env[@]}" \
            "$bin/drivers/proteus_driver" -q "$root/inputs/ctx10m.in" --set checkpoint.at_end=false \
            --set checkpoint.interval_chunks=0) >>"$out/ctx10m_startup.txt" 2>&1
        done
      done
      grep -E "^== |time  |first chunk|start-up|real" "$out/ctx10m_startup.txt" ;;
    pipeline_eager)
      # As pipeline, once, with every kernel loaded at start-up (CUDA's default loads each at its first
      # launch): the first chunk's share of module loading.
      mkdir -p /tmp/run && (cd /tmp/run && rm -rf ctx10m_out && CUDA_MODULE_LOADING=EAGER \
        "$bin/drivers/proteus_driver" -q "$root/inputs/ctx10m.in" --set checkpoint.at_end=false \
        --set checkpoint.interval_chunks=0) | tee -a "$out/ctx10m_eager.txt" ;;
    chunk_stage)
      # Each step of a ctx10m.in chunk: host launch time, and time with a wait after it (bench_chunk_stage).
      "$bin/perf/bench_chunk_stage" "$root/inputs/ctx10m.in" --chunks 30 --warmup 3 | tee "$out/chunk_stage.txt" ;;
    ncu_pipeline)
      # GPU time of every kernel of ctx10m.in's first 16 chunks (1,048,576 tokens), summed by kernel.
      mkdir -p /tmp/run && (cd /tmp/run && rm -rf ctx10m_out && ncu --clock-control none --csv \
        --kernel-name-base demangled --metrics gpu__time_duration.sum "$bin/drivers/proteus_driver" -q \
        "$root/inputs/ctx10m.in" --set sequence.tokens=1048576 --set checkpoint.at_end=false \
        --set checkpoint.interval_chunks=0 >"$out/ncu_pipeline.csv" 2>"$out/ncu_pipeline.err")
      tail -3 "$out/ncu_pipeline.err"
      python3 "$root/perf/ncu_kernels.py" "$out/ncu_pipeline.csv" --per 16 --unit chunk | tee "$out/ncu_pipeline.txt" ;;
    roofline)
      # Issue 20 item 6: the GPU's peaks (perf/gpu/peaks.py: FP32/TF32/BF16 GEMM, HBM copy) and, from
      # Nsight Compute, every kernel's FP32 work, DRAM bytes and time in one FP32 forward at each of
      # ROOFLINE_TOKENS (default 1048576 32768), upstream's tinytoy shape with token sparsity; tables by
      # perf/roofline.py. Application replay: a kernel replay would save and restore gigabytes per pass.
      python3 "$root/perf/gpu/peaks.py" --out "$out/peaks.json" >"$out/peaks.txt" 2>&1; cat "$out/peaks.txt"
      metrics=$(cd "$root/perf" && python3 -c "import roofline; print(','.join(roofline.ROOFLINE_METRICS))")
      for t in ${ROOFLINE_TOKENS:-1048576 32768}; do
        ncu --clock-control none --replay-mode application --csv --print-units base --kernel-name-base demangled \
          --metrics "$metrics" "$bin/perf/bench_module" --embed 512 --heads 32 --gates 64 --tokens "$t" --alphas 1.0 \
          --warmup 0 --repeat 1 --token-sparse >"$out/ncu_roofline_$t.csv" 2>"$out/ncu_roofline_$t.err"
        tail -2 "$out/ncu_roofline_$t.err"
        python3 "$root/perf/roofline.py" "$out/ncu_roofline_$t.csv" --peaks "$out/peaks.json" \
          --markdown "$out/roofline_$t.md" --top 20 --exclude '^fill'
      done ;;
    *) echo "device_check: unknown step '$step'" >&2; exit 2 ;;
  esac
done
# PACK=1: everything in $OUT as one results.tgz (the device tool brings back at most 8 files).
if [ -n "${PACK:-}" ]; then
  (cd "$out" && tar czf /tmp/results.tgz . && find . -mindepth 1 -delete && mv /tmp/results.tgz .)
fi
