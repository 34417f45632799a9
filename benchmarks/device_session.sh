#!/usr/bin/env bash
# The whole GPU measurement in one device call, its logs under $OUT: the CUDA tests, the training
# step of every architecture against its floors, and streamed training end to end. Writing the
# streamed run's suite is CPU work, so it runs in the background while the tests and the step's
# rows time the GPU. Each part has its own limit inside SECONDS (default 585), so that a part cut
# short still leaves the later ones their time, and whatever ran is in $OUT.
#
#   benchmarks/device_session.sh [SECONDS] [TESTS...]      # on the device, in the project's root
#
# GATHERS=1 adds gpu.py's sweep of the gathers' launch sizes (about 30 s), TILES=1 its sweep of the
# JumpReLU window kernel's launches (gpu.py's WINDOW_TILES, about 40 s; the step's rows then
# launch the fastest, the end-to-end run the plan's default window_tile); PROFILE=1 adds, after the
# end-to-end run, torch.profiler's kernel tables of the JumpReLU and TopK steps (gpu.py --profile),
# trained from their pairs, and JumpReLU's fresh and young (code still dense) steps: the default (split
# on CUDA while young) and the dense kernels.
# REPEAT=1 adds, after the step's rows, whether each architecture's trained step repeats to the byte
# (gpu.py --repeat-steps 5, about a minute). Last, as long as the budget lasts, the 98,304-feature
# dictionary's bf16 rows in one step (it fits at 64.2 GiB), fresh and trained from pairs (peak
# against plan). Every step row is followed by what is alive at its memory peak (--memory-peak).
# LATENT=1 adds, before the wide rows, latent scaling over LATENT_TOKENS (default 1M) random tokens and
# lineage at Ge et al.'s shape (benchmarks/latent_scaling.py --ge-shape: seconds and peak GPU memory).
# STREAM=0 leaves out the end-to-end part and WIDE=0 the 98,304-feature rows, for a session that
# works on the step alone; STEP=0 leaves out the step's rows. CLI=1 adds, after the step's rows,
# the real `crosslens train --recipe ge2025-pythia-160m --stream` from a fresh crosscoder on the
# same suite (benchmarks/user_run.py, CLI_TOKENS tokens, default 2M: about 100 s of steps, one
# checkpoint, the final save and the quality table), in what is left of the budget; it needs
# about 330 s, so leave out the step's rows (STEP=0) and the other late parts, and run few tests:
#   STEP=0 STREAM=0 WIDE=0 CLI=1 REPEAT=1 benchmarks/device_session.sh 585 -k "cuda and repeat" tests/test_gpu_step.py
#
# TESTS: pytest's arguments (default: the tests with cuda in their names, from the files that hold
# the CUDA twins of the kernels, which pass or skip on a CPU in CI); the step's rows are bf16 alone
# (gpu.py --precision bf16) because the float32 ones are minutes of device time that change
# little from session to session; run gpu.py without it for them.
set -u
budget=${1:-585}
shift || true
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(-k cuda tests/test_sparse_step.py tests/test_gpu_step.py tests/test_jumprelu_kernels.py
                                 tests/test_forward_to_hook.py tests/test_weight_grads.py tests/test_spliced_loss.py
                                 tests/test_compiled_losses.py tests/test_jumprelu_split.py)
out=${OUT:-/tmp/device_session}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
left() { echo $((budget - SECONDS)); }
stamp() { echo "[$SECONDS s] $*" | tee -a "$out/session.log"; }

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/gpu.txt" 2>&1
stream=${STREAM:-1}
if [ "$stream" != 0 ] || [ -n "${CLI:-}" ]; then
    OMP_NUM_THREADS=4 timeout $((budget * 50 / 100)) nice -n 10 python3 benchmarks/stream_gpu.py --suite-dir /tmp/suite --write-only > "$out/suite.log" 2>&1 &
    writer=$!
fi

stamp "tests"
timeout $((budget * 22 / 100)) python3 -m pytest -q -rfEs -p no:cacheprovider --continue-on-collection-errors "${tests[@]}" > "$out/tests.log" 2>&1
stamp "tests: exit $? ($(tail -n 1 "$out/tests.log"))"

if [ "${STEP:-1}" != 0 ]; then
    stamp "training step"
    step_share=$([ -n "${TILES:-}" ] && echo 30 || echo 22)  # the sweep's compiles and timings: about 40 s more
    timeout $((budget * step_share / 100)) python3 benchmarks/gpu.py --precision bf16 --steps 5 --rounds 5 --memory-peak ${GATHERS:+--gathers} ${TILES:+--window-tiles} 2>&1 \
        | grep -v Warning > "$out/gpu.log"
    stamp "training step: exit ${PIPESTATUS[0]}"
fi

if [ -n "${REPEAT:-}" ]; then
    stamp "the same bytes twice, $(left) s left"
    timeout $((budget * 15 / 100)) python3 benchmarks/gpu.py --precision bf16 --state trained --repeat-steps 5 --rounds 2 2>&1 \
        | grep -v Warning > "$out/repeat.log"
    stamp "the same bytes twice: exit ${PIPESTATUS[0]}"
fi

if [ -n "${CLI:-}" ]; then
    wait $writer
    stamp "$(grep '^suite:' "$out/suite.log" || echo 'suite: not written, see suite.log')"
    stamp "the real command from a fresh crosscoder, $(left) s left"
    # the command gets what is left but 90 s: a SIGTERM then checkpoints the step it reached
    timeout $(($(left) > 40 ? $(left) - 10 : 30)) python3 benchmarks/user_run.py --suite-dir /tmp/suite --written \
        --work /tmp/user --n-tokens "${CLI_TOKENS:-2000000}" --timeout $(($(left) > 120 ? $(left) - 90 : 30)) \
        --json "$out/user_run.json" -- --keep-checkpoints 1 2>&1 | grep -v Warning > "$out/user_run.log"
    status=${PIPESTATUS[0]}
    cp /tmp/user/train.out /tmp/user/run/train_log.jsonl /tmp/user/run/run.json "$out/" 2>/dev/null
    stamp "the real command: exit $status"
fi

if [ "$stream" != 0 ]; then
    [ -n "${CLI:-}" ] || wait $writer
    stamp "$(grep '^suite:' "$out/suite.log" || echo 'suite: not written, see suite.log')"
    stamp "end to end, $(left) s left"
    timeout $((budget * 45 / 100)) python3 benchmarks/stream_gpu.py --suite-dir /tmp/suite --written --chunks 2 --rounds 3 2>&1 \
        | grep -v "Warning\|Writing\|Changing" > "$out/stream.log"
    stamp "end to end: exit ${PIPESTATUS[0]}"
fi

if [ -n "${PROFILE:-}" ]; then
    stamp "profile of the sparse steps, $(left) s left"
    timeout $((budget * 20 / 100)) python3 benchmarks/gpu.py --precision bf16 --only jumprelu_crosscoder --only topk_crosscoder \
        --state trained --path sparse --profile --steps 5 --rounds 5 2>&1 | grep -v Warning > "$out/profile.log"
    stamp "profile: exit ${PIPESTATUS[0]}"
    stamp "profile of JumpReLU's dense and split steps, $(left) s left"
    timeout $((budget * 20 / 100)) python3 benchmarks/gpu.py --precision bf16 --only jumprelu_crosscoder \
        --state fresh --state young --path default --path dense --profile --steps 5 --rounds 5 2>&1 \
        | grep -v Warning > "$out/profile_dense.log"
    stamp "profile of the dense steps: exit ${PIPESTATUS[0]}"
fi

if [ -n "${LATENT:-}" ]; then
    stamp "latent scaling and lineage at Ge et al.'s shape, $(left) s left"
    timeout $((budget * 30 / 100)) python3 benchmarks/latent_scaling.py --ge-shape --device cuda \
        --ge-tokens "${LATENT_TOKENS:-1048576}" > "$out/latent_scaling.log" 2>&1
    stamp "latent scaling: exit $? ($(tail -n 2 "$out/latent_scaling.log" | tr '\n' ' '))"
fi

if [ "${WIDE:-1}" != 0 ]; then
    stamp "the 98,304-feature dictionary, $(left) s left"
    timeout $(($(left) > 30 ? $(left) : 30)) python3 benchmarks/gpu.py --d-sae 98304 --only jumprelu_crosscoder --precision bf16 \
        --optimizer-state bfloat16 --micro-batches 1 --steps 2 --rounds 2 --memory-peak \
        --state fresh --state trained --path default --path sparse 2>&1 | grep -v Warning > "$out/wide.log"
    stamp "the 98,304-feature dictionary: exit ${PIPESTATUS[0]}"
fi
