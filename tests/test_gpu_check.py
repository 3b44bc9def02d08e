"""bench/gpu_check.py's CPU half with the quick budget: every check of the GPU script runs its code
here too (CUDA-only ones say so), so the script a GPU machine runs has been run."""
import os
import re
import subprocess
import sys

from conftest import ROOT

CHECKS = ['device', 'train fp32', 'train bf16 gan', 'train fp16', 'train bf16 compile', 'resume fp32>bf16', 'ddp x2',
          'torchrun reconstruction', 'torchrun animate', 'engine cpu bf16', 'engine fp32', 'engine fp32 ieee',
          'engine bf16', 'engine fp16', 'memory', 'vox-256 fps', 'export fp16']
CUDA_ONLY = ['train fp16', 'engine fp32 ieee', 'engine fp16']


def test_gpu_check_cpu_half():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--device', 'cpu', '--quick'],
                         capture_output=True, text=True, timeout=400, env=env, cwd=str(ROOT))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert 'no CUDA: the CPU half' in res.stdout
    table = res.stdout[res.stdout.rindex('\ncheck '):].strip().splitlines()[2:]  # after the header lines
    rows = dict(re.match(r'(.+?)\s{2,}(pass|FAIL|skip|info)\b', line).groups() for line in table if line.strip()
                and not re.match(r'\d+ checks', line))
    assert list(rows) == CHECKS, rows
    assert all(rows[c] == 'skip' for c in CUDA_ONLY), rows
    run_here = [c for c in CHECKS if c not in CUDA_ONLY and rows[c] != 'info']
    assert all(rows[c] == 'pass' for c in run_here if c not in ('train bf16 compile', 'torchrun animate', 'memory')), rows
    assert '0 failed' in res.stdout
