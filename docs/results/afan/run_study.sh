#!/usr/bin/env bash
# The A-FAN study (issue 18), as it was run: one process per arm (or per arm and seed for the longest arms),
# side by side, each with one thread and its own results file. From the repository root:
#   PYTHONPATH=src bash docs/results/afan/run_study.sh && python -m lawn.harness.studies.afan docs/results/afan --measure-cost
# The per-seed `lawn run` rows have the same keys as the sweep's, so afterwards
#   lawn sweep docs/sweeps/study_afan_plain.toml --results docs/results/afan/plain_matched.jsonl --set epochs=20 --dry-run
# reports "3 runs, 3 already in" (likewise for afan_batch.jsonl).
set -euo pipefail
D=docs/results/afan
S="nice -n 5 lawn sweep --threads 1 --no-progress"
R="nice -n 5 lawn run --config $D/run_config.json --threads 1 --no-progress"
mkdir -p $D/parts
$S docs/sweeps/study_afan_plain.toml --results $D/plain.jsonl > /dev/null 2>&1 &
AFAN="--method afan --set afan_layer=stages.0 --set afan_steps=2 --set afan_step_size=0.05"
# seeds 0-1 (aug, position) and seed 0 (random, late) by the sweeps; the other seeds as single runs
$S docs/sweeps/study_afan.toml --results $D/afan_aug.jsonl > /dev/null 2>&1 &
$S docs/sweeps/study_afan.toml --results $D/afan_position.jsonl --set afan_normalize=position > /dev/null 2>&1 &
$S docs/sweeps/study_afan.toml --results $D/afan_random.jsonl --set afan_direction=random > /dev/null 2>&1 &
$S docs/sweeps/study_afan.toml --results $D/afan_late.jsonl --set afan_layer=stages.2 > /dev/null 2>&1 &
for s in 0 1 2; do
  $R --set epochs=20 --set seed=$s --results $D/parts/plain_matched_s$s.jsonl > /dev/null 2>&1 &
  $R $AFAN --set afan_normalize=batch --set seed=$s --results $D/parts/afan_batch_s$s.jsonl > /dev/null 2>&1 &
done
wait
cat $D/parts/plain_matched_s*.jsonl > $D/plain_matched.jsonl
cat $D/parts/afan_batch_s*.jsonl > $D/afan_batch.jsonl
# The sweeps above finish all 3 seeds by themselves; as run, to use more processes, they were stopped after
# seed 1 (aug, position) or seed 0 (random, late) and these single runs appended instead:
#   $R $AFAN --set seed=2 --results $D/parts/afan_aug_s2.jsonl
#   $R $AFAN --set afan_normalize=position --set seed=2 --results $D/parts/afan_position_s2.jsonl
#   $R $AFAN --set afan_direction=random --set seed={1,2} --results $D/parts/afan_random_s{1,2}.jsonl
#   $R $AFAN --set afan_layer=stages.2 --set seed={1,2} --results $D/parts/afan_late_s{1,2}.jsonl
