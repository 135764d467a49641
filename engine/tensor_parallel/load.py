"""Loading a model split over N ranks: rank 0's entry (`load_tensor_parallel`) and each rank's
shard model (`build_local`).

Everything a user can get wrong is checked on rank 0 before any process starts: N against the
architecture, the device list, the model files' config.  Then rank 0 starts the followers,
every rank reads its own shard (tensor by tensor, see shards.py) in parallel, and rank 0 waits
until all are loaded.
"""
from __future__ import annotations

import atexit
import importlib
import time
from pathlib import Path

from ..errors import ModelFilesError, OptionError
from ..runtime import Device, activate_device, check_dtype, compute_dtype_for, parse_device
from .group import Group
from .plan import ShardPlan, check_world

RANDOM_PREFIX = "random:"


def parse_devices(text: str, world: int) -> tuple[str, list[int] | None]:
    """`cpu` -> every rank on the CPU; `gpu` -> GPUs 0..N-1; `gpu:0,1` -> those GPUs."""
    value = str(text).strip().lower()
    if value == "cpu":
        return "cpu", None
    kind, _, rest = value.partition(":")
    if kind in ("gpu", "cuda"):
        if rest == "":
            return "gpu", list(range(world))
        items = [i.strip() for i in rest.split(",")]
        if all(i.isdigit() for i in items):
            gpus = [int(i) for i in items]
            if len(gpus) == world and len(set(gpus)) == world:
                return "gpu", gpus
            raise OptionError(f"--device {text!r} names {len(set(gpus))} GPU(s) but "
                              f"--tensor-parallel {world} needs {world} different ones; give "
                              f"--device gpu (GPUs 0..{world - 1}) or a list like gpu:"
                              f"{','.join(str(i) for i in range(world))}")
    raise OptionError(f"--device {text!r} is not understood with --tensor-parallel {world}; use "
                      "cpu, gpu (GPUs 0..N-1) or a list like gpu:0,1")


def model_config(spec: str):
    """The config of `random:<variant>` or of a model directory (nothing else is read)."""
    from ..config import config_from_dict, load_config
    from ..variants import get_variant

    if spec.startswith(RANDOM_PREFIX):
        variant = get_variant(spec[len(RANDOM_PREFIX):])
        return config_from_dict(variant.arch.config_dict(), f"random:{variant.short_name}")
    model_dir = Path(spec).expanduser()
    if not model_dir.is_dir():
        raise ModelFilesError(f"{model_dir}: no such directory; give a model directory or "
                              "random:<variant> (e.g. random:350M-mono)")
    return load_config(model_dir)


def _factory(job: dict):
    module, _, name = job["factory"].partition(":")
    return getattr(importlib.import_module(module), name)


def build_local(job: dict, rank: int, world: int, channel):
    """This rank's shard model for `job` (what load_tensor_parallel hands the followers), its
    collectives on `channel` (remote.Channel)."""
    if job.get("factory"):
        return _factory(job)(job, rank, world, channel.all_reduce)
    from ..model import find_weight_file
    from .shards import random_shards, read_shards

    spec, dtype = job["model"], job["dtype"]
    device = Device("cpu") if job["device"] == "cpu" else Device("gpu", job["gpus"][rank])
    activate_device(device, dtype)
    config = model_config(spec)
    if spec.startswith(RANDOM_PREFIX):
        eos = job.get("eos_token_id")
        if eos is not None:  # a BPE tokenizer given to rank 0 moves end-of-text
            from ..config import config_from_dict

            raw = dict(config.raw, eos_token_id=eos, pad_token_id=eos)
            config = config_from_dict(raw, config.source)
    plan = ShardPlan(config.arch, rank, world)
    if spec.startswith(RANDOM_PREFIX):
        arrays = random_shards(config, plan, job.get("seed", 0))
    else:
        arrays = read_shards(find_weight_file(Path(spec).expanduser()), config, plan)
    return build_shard_model(arrays, config, dtype, device, plan, channel, job.get("impl", "fast"))


def build_shard_model(arrays, config, dtype: str, device: Device, plan: ShardPlan, channel,
                      impl: str = "fast"):
    """FastCodeGen over this rank's already-sliced arrays, all-reducing once per layer (and,
    with the vocabulary split, once per lookup, the logits gathered; vocab.py)."""
    if impl != "fast":
        raise OptionError(f"--impl {impl} cannot run split over GPUs (PaddleNLP's CodeGen has no "
                          "tensor parallelism); use --impl fast with --tensor-parallel")
    from ..fast_model import FastCodeGen
    from .vocab import VocabSplit

    return FastCodeGen(arrays, config, dtype, device, compute_dtype_for(dtype, device),
                       shard=(plan.rank, plan.world), reduce=channel.all_reduce,
                       vocab=VocabSplit.of(plan, channel.all_reduce, channel.all_gather))


def load_tensor_parallel(spec: str, dtype: str, device: str, world: int, seed: int = 0,
                         impl: str = "fast", tokenizer_dir=None, factory: str | None = None):
    """Rank 0: check, start the followers, load the shard, wait for all: a LoadedModel whose
    model is a RemoteModel (engine/interface.py's Model)."""
    from ..model import LoadedModel, random_tokenizer
    from ..tokenizer import ByteTokenizer, load_tokenizer
    from .remote import Channel, RankLost, RemoteModel

    start = time.perf_counter()
    kind, gpus = parse_devices(device, world)
    if impl != "fast" and factory is None:
        raise OptionError(f"--impl {impl} cannot run split over GPUs (PaddleNLP's CodeGen has no "
                          "tensor parallelism); use --impl fast with --tensor-parallel")
    check_dtype(dtype, Device(kind) if kind == "cpu" else Device("gpu", gpus[0]), impl)
    config = model_config(spec)
    check_world(config.arch, world, config.source)
    ShardPlan(config.arch, 0, world)  # the vocabulary layout too (a bad CGW_TP_VOCAB)
    job = {"model": spec, "dtype": dtype, "device": kind, "gpus": gpus, "seed": seed,
           "impl": impl, "factory": factory}
    if spec.startswith(RANDOM_PREFIX):
        tokenizer = ByteTokenizer(config.eos_token_id)
        if tokenizer_dir is not None:
            tokenizer, eos = random_tokenizer(Path(tokenizer_dir).expanduser(), config.source,
                                              config.arch.vocab_size)
            job["eos_token_id"] = eos
    else:
        from ..model import find_weight_file

        model_dir = Path(spec).expanduser()
        find_weight_file(model_dir)  # a missing weight file is one error here, not N
        tokenizer = load_tokenizer(model_dir, config.eos_token_id)
        if tokenizer.usable_ids() > config.arch.vocab_size:
            raise ModelFilesError(f"{model_dir}: the tokenizer has {tokenizer.usable_ids()} tokens "
                                  f"but {config.source} gives vocab_size {config.arch.vocab_size};"
                                  " the tokenizer files belong to another model, copy the "
                                  "matching ones")
    if kind == "gpu":
        for gpu in gpus:  # every rank's GPU exists (and takes the dtype) before any starts
            activate_device(Device("gpu", gpu), dtype)
        activate_device(Device("gpu", gpus[0]), dtype)
    group = Group(world, kind, gpus)
    group.start(job)
    channel = Channel()
    try:
        local = build_local(job, 0, world, channel)
    except BaseException:  # the followers meet the same error: stop them, report it once
        group.closing = True
        group.close(timeout_s=0.5)
        raise
    model = RemoteModel(local, channel, group, world)
    try:
        channel.flag(True)  # every follower has loaded its shard
    except RuntimeError:
        raise RankLost(group.exited_follower(2.0) or group.failure or
                       "a tensor-parallel follower failed while loading") from None
    group.ready = True
    atexit.register(model.close)
    if job.get("eos_token_id") is not None:
        from ..config import config_from_dict

        config = config_from_dict(dict(config.raw, eos_token_id=job["eos_token_id"],
                                       pad_token_id=job["eos_token_id"]), config.source)
    return LoadedModel(model, tokenizer, config, spec, time.perf_counter() - start)
