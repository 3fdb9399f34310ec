"""Click commands, one module per topic; ``ALL_COMMANDS`` is what ``glow-repro`` registers."""

from glow_repro.commands.bench import bench_command
from glow_repro.commands.board import board_command
from glow_repro.commands.manipulate import manipulate_command
from glow_repro.commands.plan import plan_command
from glow_repro.commands.report import compare_command, report_command
from glow_repro.commands.sample import sample_command
from glow_repro.commands.stability import replay_command
from glow_repro.commands.study import run_command, status_command
from glow_repro.commands.train import train_command
from glow_repro.commands.verdict import verdict_command

ALL_COMMANDS: list = [
    train_command,
    run_command,
    status_command,
    report_command,
    compare_command,
    replay_command,
    bench_command,
    plan_command,
    sample_command,
    verdict_command,
    board_command,
    manipulate_command,
]
