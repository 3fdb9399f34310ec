"""glow-repro's training step against public Glow implementations, side by side.

See benchmarks/README.md, "Against other implementations". Each of our two figures is set
against the fastest peer of the same round, the strictest pairing.

Every contender trains the reference config (1x32x32 images, K=8 steps of flow, L=3 levels,
coupling width 128, affine coupling, LU-decomposed 1x1 convolution, batch 32, Adam) in a fresh
process, one contender after another in rotated order within a round, so that drift of the
host's speed falls on every contender alike. A peer is timed as its own training script runs
it (forward, its negative log-likelihood, backward, Adam step); glow-repro as ``glow-repro
bench`` times it (the same plus gradient clipping, finiteness checks and the EMA update), in
float32, in float32 under ``train.compile`` (compile time outside the timing) and in bf16.

The peers are not installed: point the script at a checkout (or unpacked sdist) of each:

    python benchmarks/bench_peers.py --rounds 3 --threads 2 \\
        --peer rosinality=PATH/glow-pytorch --peer y0ast=PATH/Glow-PyTorch \\
        --peer normflows=PATH/normflows-1.7.3

Without ``--peer`` only glow-repro's three are timed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REFERENCE = Path(__file__).with_name("reference.yaml")
SHAPE = (1, 32, 32)
DEPTH, LEVELS, WIDTH, BATCH = 8, 3, 128, 32
#: Our contenders and the reference config's overrides each times.
OURS = {
    "glow-repro float32": ["train.precision=float32"],
    "glow-repro float32 compiled": ["train.precision=float32", "train.compile=true"],
    "glow-repro bf16": ["train.precision=bf16"],
}


def _images(generator: torch.Generator) -> torch.Tensor:
    """A batch of dequantised 8-bit images in [-0.5, 0.5), as the peers' scripts feed them."""
    pixels = torch.randint(0, 256, (BATCH, *SHAPE), generator=generator).float()
    return (pixels + torch.rand(pixels.shape, generator=generator)) / 256 - 0.5


def _rosinality(checkout: Path):
    sys.path.insert(0, str(checkout))
    import model as peer  # rosinality/glow-pytorch: model.py

    # Its coupling network's width is a keyword default (512) that Flow does not pass on.
    peer.AffineCoupling.__init__.__defaults__ = (WIDTH, True)
    net = peer.Glow(SHAPE[0], DEPTH, LEVELS, affine=True, conv_lu=True)

    def loss(x: torch.Tensor) -> torch.Tensor:
        log_p, logdet, _ = net(x)
        return -(log_p + logdet).mean()

    return net, loss


def _y0ast(checkout: Path):
    sys.path.insert(0, str(checkout))
    torch.qr = torch.linalg.qr  # its 1x1 convolution is initialised with torch.qr, gone from torch
    from model import Glow  # y0ast/Glow-PyTorch: model.py (imports its modules.py)

    net = Glow(
        image_shape=(SHAPE[1], SHAPE[2], SHAPE[0]),
        hidden_channels=WIDTH,
        K=DEPTH,
        L=LEVELS,
        actnorm_scale=1.0,
        flow_permutation="invconv",
        flow_coupling="affine",
        LU_decomposed=True,
        y_classes=10,
        learn_top=True,
        y_condition=False,
    )

    def loss(x: torch.Tensor) -> torch.Tensor:
        _, nll, _ = net(x, None)
        return nll.mean()

    return net, loss


def _normflows(checkout: Path):
    sys.path.insert(0, str(checkout))
    import normflows as nf

    channels, size = SHAPE[0], SHAPE[1]
    flows, merges, priors = [], [], []
    for level in range(LEVELS):  # level 0 is the top of the multi-scale stack
        width = channels * 2 ** (LEVELS + 1 - level)
        steps = [nf.flows.GlowBlock(width, WIDTH, split_mode="channel", scale=True) for _ in range(DEPTH)]
        flows.append([*steps, nf.flows.Squeeze()])
        if level == 0:
            latent = (channels * 2 ** (LEVELS + 1), size // 2**LEVELS, size // 2**LEVELS)
        else:
            merges.append(nf.flows.Merge())
            latent = (channels * 2 ** (LEVELS - level), size // 2 ** (LEVELS - level), size // 2 ** (LEVELS - level))
        priors.append(nf.distributions.DiagGaussian(latent))
    net = nf.MultiscaleFlow(priors, flows, merges, class_cond=False)
    return net, net.forward_kld


PEERS = {"rosinality": _rosinality, "y0ast": _y0ast, "normflows": _normflows}


def _time_peer(name: str, checkout: Path, steps: int, repeats: int) -> tuple[list[float], int]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net, loss = PEERS[name](checkout)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = [_images(generator) for _ in range(steps)]
    with torch.no_grad():  # data-dependent ActNorm initialisation, outside the timing
        loss(batches[0])

    def step(x: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        value = loss(x)
        value.backward()
        optimiser.step()
        if not math.isfinite(value.item()):
            raise SystemExit(f"{name}: the loss is not finite")

    for x in batches[:3]:
        step(x)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for x in batches:
            step(x)
        rates.append(steps * BATCH / (time.perf_counter() - started))
    return rates, sum(p.numel() for p in net.parameters())


def _time_ours(overrides: list[str], steps: int, repeats: int) -> tuple[list[float], int]:
    from glow_repro.core.config import load_run_config
    from glow_repro.run.benchmark import measure

    config = load_run_config(REFERENCE, overrides)
    result = measure(config, torch.device("cpu"), steps=steps, repeats=repeats)
    return result.train_rates, result.n_params


def _one(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.one in OURS:
        rates, params = _time_ours(OURS[args.one], args.steps, args.repeats)
    else:
        rates, params = _time_peer(args.one, Path(args.checkout), args.steps, args.repeats)
    print(json.dumps({"images_per_s": statistics.median(rates), "parameters": params}))


def _measure_in_fresh_process(name: str, checkout: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", name, "--checkout", checkout]
    command += ["--steps", str(args.steps), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _table(rates: dict[str, list[float]], parameters: dict[str, int], peers: list[str]) -> str:
    """The rates of every round, their medians and, for our two, the ratio to the fastest peer
    of the same round (median and range over rounds): the strictest pairing."""
    rounds = len(next(iter(rates.values())))
    header = "| | parameters | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " | median | vs fastest peer |"
    lines = [header, "|" + "---|" * (rounds + 4)]
    fastest = [max(rates[peer][r] for peer in peers) for r in range(rounds)] if peers else []
    for name, values in rates.items():
        ratio = ""
        if fastest and name in OURS:
            paired = [ours / peer for ours, peer in zip(values, fastest)]
            ratio = f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})"
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {parameters[name]:,} | {cells} | {statistics.median(values):.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peer", action="append", default=[], metavar="NAME=CHECKOUT", help=f"NAME: {', '.join(PEERS)}"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per process (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--checkout", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _one(args)
    peers = dict(entry.split("=", 1) for entry in args.peer)
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer {', '.join(unknown)}; known: {', '.join(PEERS)}")
    contenders = [(name, path) for name, path in peers.items()] + [(name, "") for name in OURS]
    rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    parameters: dict[str, int] = {}
    for round_index in range(args.rounds):
        shift = round_index % len(contenders)
        for name, checkout in contenders[shift:] + contenders[:shift]:
            measured = _measure_in_fresh_process(name, checkout, args)
            rates[name].append(measured["images_per_s"])
            parameters[name] = measured["parameters"]
            print(f"round {round_index + 1}: {name} {rates[name][-1]:.1f} images/s", file=sys.stderr)
    print(_table(rates, parameters, list(peers)))


if __name__ == "__main__":
    main()
