"""The small scale's full post-training grids (PSFT and G-OPD, 3 seeds) build a DAG: dry run."""

from __future__ import annotations

import re

from tests.helpers import dry_run


def test_small_scale_full_grids_dry_run(snakemake_bin, root):
    # --forceall: every job is listed, also in a tree where the small scale has run
    rc, out = dry_run(
        snakemake_bin, root, "--forceall", "psft_all", "gopd_all", "--config", "scale=small"
    )
    assert rc == 0, out[-2000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    # PSFT: 5 arms x 3 seeds, RL after SFT from sft and psft x 3 seeds
    assert jobs["psft_train"] == "15" and jobs["psft_rl"] == "6"
    # G-OPD per seed: 5 lambdas, strong-to-weak OPD/ExOPD/ExOPD+RC/SFT, multi-teacher
    # OPD/ExOPD/SFT = 12 student runs; ExPO 2 single + 2 multi; GRPO teachers: s2w + 2 domains
    assert jobs["gopd_train"] == "36" and jobs["gopd_expo"] == "4"
    assert jobs["gopd_grpo_teacher"] == "3" and jobs["gopd_s2w_base"] == "1"
    for v in ("s2w-rc-lam1.25-s2", "mt-lam1.25-s1", "mt-sft-s2", "mt-expo0.25", "psft-s2-rl"):
        assert f"/{v}/lm_eval.json" in out, v
