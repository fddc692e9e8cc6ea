"""Running code on fake CPU devices or several processes, in subprocesses.

XLA reads --xla_force_host_platform_device_count when jax is first imported,
so each device count gets a fresh Python process.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT


def device_env(num_devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={num_devices}')
  return env


def run_python(code, num_devices, timeout=900):
  """Runs `code` with `num_devices` fake CPU devices; returns the JSON it
  prints on its last line."""
  result = subprocess.run(
      [sys.executable, '-c', textwrap.dedent(code)], cwd=REPO_ROOT,
      env=device_env(num_devices), capture_output=True, text=True,
      timeout=timeout)
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
