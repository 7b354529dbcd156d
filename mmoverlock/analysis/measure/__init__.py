"""The one measuring module of mmoverlock's benchmarks: interleaved timing of callables, the single definition of
peak memory, where a training step's memory goes (saved tensors by module), how many operators a call dispatches
(its kernel launches on a GPU), how a time splits into a per-call and a per-pixel part over sizes, the machine and
instruction sets a figure was measured on, instruction-set settings run in child processes, and the result writers
(JSON + markdown with the command)."""
from .activations import (SAVED_ACTIVATIONS_DEFINITION, saved_activations, saved_activations_in_fresh_process,
                          write_saved_activations)
from .dispatch import DISPATCHED_OPS_DEFINITION, dispatched_ops
from .isa import (ISA_ENV_VARS, ISA_SETTINGS, add_isa_argument, current_isa_setting, isa_environment, isa_output,
                  run_isa_settings)
from .machine import allocator_environment, cpu_isa_flags, cpu_model, describe_machine, machine_info, onednn_isa
from .memory import (PEAK_MEMORY_DEFINITION, peak_memory_in_fresh_process, peak_memory_mib,
                     return_freed_memory_to_os, status_kib)
from .scaling import SIZE_SCALING_DEFINITION, SizeScaling, size_scaling
from .report import (command_line, markdown_table, measure_per_isa, ratio, record, report_header, with_ratio,
                     write_isa_comparison, write_json, write_markdown)
from .timing import Timing, interleaved_times, rounds_within, set_threads, switch_mode, synchronize, time_call

__all__ = [
    'DISPATCHED_OPS_DEFINITION', 'dispatched_ops', 'Timing', 'interleaved_times', 'rounds_within', 'set_threads', 'switch_mode',
    'synchronize', 'time_call',
    'SAVED_ACTIVATIONS_DEFINITION', 'saved_activations', 'saved_activations_in_fresh_process',
    'write_saved_activations', 'PEAK_MEMORY_DEFINITION', 'peak_memory_mib', 'peak_memory_in_fresh_process', 'return_freed_memory_to_os',
    'status_kib', 'allocator_environment', 'cpu_isa_flags', 'cpu_model', 'machine_info', 'describe_machine',
    'onednn_isa', 'ISA_SETTINGS',
    'ISA_ENV_VARS', 'current_isa_setting', 'isa_environment', 'isa_output', 'add_isa_argument', 'run_isa_settings',
    'command_line', 'measure_per_isa', 'ratio', 'with_ratio', 'markdown_table', 'report_header', 'record',
    'write_json', 'write_markdown', 'write_isa_comparison', 'SIZE_SCALING_DEFINITION', 'SizeScaling', 'size_scaling'
]
