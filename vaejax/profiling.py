"""Where the time of a compiled step goes: XLA ops by kind, from a trace.

`op_categories` sorts the instructions of an optimised HLO module into
matmul (dots and convolutions), collectives, control flow, random (PRNG
hashing) and the train step's named scopes; `profile_window` runs one
window under jax.profiler and adds up each category's milliseconds per step.
Used by `python -m vaejax.benchmark --profile`.
"""
import collections
import glob
import gzip
import json
import os
import re
import time

import jax

_RANDOM_OP = re.compile(
    r'threefry|random_bits|_uniform|_bernoulli|_normal|fold_in|random_split')
_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                'collective-permute')
_CONTROL_FLOW = ('while', 'conditional', 'call')
_SCOPES = ('inputs', 'loss_and_gradient', 'metrics', 'optimizer')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')


def _opcode(rest):
  """The opcode of an HLO instruction, given the text after `name = `."""
  if rest.startswith('('):  # A tuple shape: skip to its closing bracket.
    depth = 0
    for i, char in enumerate(rest):
      depth += {'(': 1, ')': -1}.get(char, 0)
      if depth == 0:
        rest = rest[i + 1:]
        break
  else:
    rest = rest.split(' ', 1)[1]
  return rest.strip().split('(', 1)[0]


def op_categories(hlo_text):
  """{instruction name: category} for an optimised HLO module's text.

  Categories: matmul (a dot or convolution, or a fusion containing one),
  collectives, control_flow (whose bodies are counted op by op), random
  (ops traced from jax.random), else the train step's named scope the op
  came from, else `other`.
  """
  computation_ops = collections.defaultdict(set)
  instructions = {}
  computation = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, rest = match.groups()
    opcode = _opcode(rest)
    computation_ops[computation].add(opcode)
    calls = re.search(r'calls=%?([\w.\-]+)', rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    instructions[name] = (opcode, calls and calls.group(1),
                          op_name.group(1) if op_name else '')

  categories = {}
  for name, (opcode, calls, op_name) in instructions.items():
    called_ops = computation_ops.get(calls, set())
    if opcode in ('dot', 'convolution') or (
        opcode == 'fusion' and called_ops & {'dot', 'convolution'}):
      category = 'matmul'
    elif opcode.replace('-start', '').replace('-done', '') in _COLLECTIVES:
      category = 'collectives'
    elif opcode in _CONTROL_FLOW:
      category = 'control_flow'
    elif _RANDOM_OP.search(op_name):
      category = 'random'
    else:
      category = next((scope for scope in _SCOPES
                       if f'/{scope}/' in f'/{op_name}/'), 'other')
    categories[name] = category
  return categories


def op_descriptions(hlo_text):
  """{instruction name: 'its result shape  the JAX op it came from'}: what
  tells one convolution of a step from another (forward, input or kernel
  gradient: `transpose(jvp())` marks the backward pass)."""
  descriptions = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      name, rest = match.groups()
      op_name = re.search(r'op_name="([^"]*)"', rest)
      descriptions[name] = ' '.join(
          [rest.split(' ', 1)[0]]
          + ([op_name.group(1).split('/', 1)[-1]] if op_name else []))
  return descriptions


def _union_length(intervals):
  """Total length covered by (start, end) intervals, overlaps counted once."""
  total, reach = 0.0, float('-inf')
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


def profile_window(compiled, state, args, steps, batch_size, trace_dir):
  """Runs one window under jax.profiler; where the time of a step goes."""
  hlo_text = compiled.as_text()
  categories = op_categories(hlo_text)
  descriptions = op_descriptions(hlo_text)
  start = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
  traces = sorted(glob.glob(os.path.join(trace_dir, '**',
                                         '*perfetto_trace.json.gz'),
                            recursive=True), key=os.path.getmtime)
  with gzip.open(traces[-1]) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  op_ms = collections.Counter()
  intervals = []
  for event in events:
    if event.get('ph') == 'X' and event.get('name') in categories:
      op_ms[event['name']] += event.get('dur', 0) / 1e3 / steps
      if categories[event['name']] != 'control_flow':
        intervals.append((event['ts'], event['ts'] + event.get('dur', 0)))
  by_category = collections.Counter()
  for name, ms in op_ms.items():
    if categories[name] != 'control_flow':
      by_category[categories[name]] += ms
  matmul_ms = by_category.get('matmul', 0.0)
  profile = {
      'wall_ms_per_step': round(wall_ms, 3),
      # XLA's CPU runtime runs independent ops of a step concurrently, so
      # the ops' times can add up to more than the wall time; the time in
      # which at least one op ran cannot.
      'busy_ms_per_step': round(_union_length(intervals) / 1e3 / steps, 3),
      'ms_per_step': {k: round(v, 3) for k, v in by_category.most_common()},
      'slowest_ops': [
          [name, round(ms, 3), categories[name], descriptions[name]]
          for name, ms in op_ms.most_common()
          if categories[name] != 'control_flow'][:12],
      'matmul_bound_examples_per_s': (
          round(batch_size / matmul_ms * 1e3, 1) if matmul_ms else None),
  }
  return state, profile
