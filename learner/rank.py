"""`LearnerRank`: one data-parallel rank of the DeepSpeed learner, a plain Python class.

cluster/learner_group.py turns K of these into Ray actors (one per rank) and calls every method on
all ranks at once; a test or a benchmark can also run a world-size-1 rank in its own process.
Methods marked *collective* must be entered by every rank (ZeRO-3 gathers parameters in forward
and for export/broadcast; checkpoints and the step's all-reduces are collective at any stage).

The training algorithm itself lives in learner/train_step.py; this class only owns the process
state: distributed environment, engines, optimizer and schedule, checkpoints, weight sync.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from datetime import timedelta
from typing import Any, Optional, Sequence

import torch

from learner import train_step as steps
from learner.batch import LearnerBatch
from learner.config import AlgorithmConfig, LearnerConfig
from learner.cpu_cores import core_block
from learner.ds_ops import use_extensions_dir
from learner.logprobs import MicroBatch, response_logprobs
from learner.moe import RouterHooks, routing_metrics, topk_routers
from learner.weight_protocol import ManifestEntry
from learner.weight_sync import WeightLayout, WeightSender, full_shape, gathered, listen_socket


class LearnerRank:
    """One DP rank. Public calls: train_step, sft_step, probe_logprobs, save/load_checkpoint,
    export_hf, full_state_dict, weight_manifest/weight_plan/weight_sync_address/init_weight_sync/
    broadcast_weights, param_checksum, shutdown. Environment variables are set here, before
    deepspeed is imported, so the class works both as a Ray actor and in-process (world size 1).

    Two-phase: the constructor only places the rank (node_info and weight_sync_address work then);
    `build` — once the group knows where every rank landed — sets up DeepSpeed. In-process: `create`."""

    def __init__(self) -> None:
        self.engine = None  # placed, not built
        self._sender = None
        self._listening: dict[int, socket.socket] = {}  # port -> socket of a rendezvous this rank will host

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> "LearnerRank":
        """A built rank in this process (world size 1 in tests and benchmarks): cls() then build()."""
        rank = cls()
        rank.build(*args, **kwargs)
        return rank

    def build(
        self,
        model_path: str,
        cfg: LearnerConfig,
        algo: AlgorithmConfig,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        total_steps: int,
        temperature: float = 1.0,
        device: str = "cpu",
        local_rank: Optional[int] = None,
        local_size: Optional[int] = None,
    ):
        self.cfg, self.algo = cfg, algo
        self.rank, self.world_size = rank, world_size
        self.temperature = temperature
        self.micro_batch_tokens = cfg.micro_batch_tokens
        self.model_path = model_path
        # DeepSpeed reads these at import/init time: they must be in place before `import deepspeed`.
        # LOCAL_RANK matters even with gloo: without it DeepSpeed tries MPI discovery.
        os.environ.update({
            "RANK": str(rank), "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
            "LOCAL_RANK": str(rank if local_rank is None else local_rank),
            "LOCAL_SIZE": str(world_size if local_size is None else local_size),
            "DS_ACCELERATOR": "cuda" if device == "cuda" else "cpu",
        })
        use_extensions_dir()  # DeepSpeed's JIT-built ops: this virtual environment's own (learner/ds_ops.py)
        self._pin_threads(cfg, rank, local_size or world_size, device)
        torch.manual_seed(cfg.seed)
        self._join_process_group(master_addr, master_port, device)

        from learner.engine import build_engine, build_reference

        model = self.load_model(model_path, cfg)
        # MoE router balance loss: on when learner.moe_aux_loss_coef > 0, or (left None) when the
        # model's own config asks for router logits with a positive coefficient.
        self._aux_coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
        wants_aux = cfg.moe_aux_loss_coef is not None or bool(getattr(model.config, "output_router_logits", False))
        self._has_aux = hasattr(model.config, "router_aux_loss_coef")  # an MoE model transformers balances
        self._router_aux = self._has_aux and wants_aux and self._aux_coef > 0
        # MoE: expert load, agreement with the sampler's routing, and routing replay (learner/moe.py)
        self._router = RouterHooks(model, replay=cfg.routing_replay) if topk_routers(model) else None
        if cfg.routing_replay and self._router is None:
            raise ValueError("learner.routing_replay is on but the model has no top-k MoE router")
        self.engine, self.optimizer, self.scheduler = build_engine(model, cfg, world_size, total_steps)
        self.device = self.engine.device
        self.ref = None
        if self.uses_reference(algo):  # KL term or DPO
            self.ref = build_reference(self.load_model(model_path, cfg), cfg, world_size, self.device)
        self._layout: Optional[WeightLayout] = None
        self._sender: Optional[WeightSender] = None

    @staticmethod
    def _pin_threads(cfg: LearnerConfig, rank: int, ranks_here: int, device: str) -> None:
        """Torch threads: cfg.threads_per_rank, or the cores this process may use shared among the node's
        ranks; with cfg.cpu_cores (CPU only), rank r is pinned to the r-th block of that many cores,
        wrapping (learner/cpu_cores.py, the rule rollout workers follow too)."""
        threads = cfg.threads_per_rank or max(1, len(os.sched_getaffinity(0)) // max(1, ranks_here))
        if cfg.cpu_cores and device == "cpu":
            os.sched_setaffinity(0, core_block(cfg.cpu_cores, rank, threads, "learner.cpu_cores"))
        torch.set_num_threads(threads)

    def _join_process_group(self, master_addr: str, master_port: int, device: str) -> None:
        """The learner's default process group (gloo on CPU, NCCL on GPU), adopted by DeepSpeed."""
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        rank, world_size = self.rank, self.world_size
        backend, timeout = ("nccl" if device == "cuda" else "gloo"), timedelta(minutes=30)
        if not torch.distributed.is_initialized():
            # The default group forms on a TCP store that rank 0 serves from a socket on master_addr
            # alone (torch's own store would listen on every interface); DeepSpeed adopts the group.
            store = rendezvous_store(master_addr, master_port, rank, world_size, timeout,
                                     self._listening.pop(master_port, None))
            torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout, verbose=False)
        if device == "cpu":
            self._barrier()  # every rank has mapped every rank's all-reduce segment: the names can go
            release_shm_segment(master_addr, master_port, rank)

    def load_model(self, model_path: str, cfg: LearnerConfig):
        """The model this rank trains (learner/critic.py's CriticRank: the value model)."""
        from learner.engine import load_model

        return load_model(model_path, cfg)

    def uses_reference(self, algo: AlgorithmConfig) -> bool:
        return steps.uses_reference(algo)

    # ---- what learner/train_step.py needs (its Engine protocol) --------------------------------
    def forward(self, mb: MicroBatch, *, grad: bool, entropy_grad: bool = False, reference: bool = False,
                temperature: Optional[float] = None, measure_routing: bool = False,
                router_aux: Optional[bool] = None):
        """`router_aux` overrides whether a grad forward computes the MoE balance loss (None: the
        learner's setting)."""
        model = self.ref if reference else self.engine
        aux = self._router_aux if router_aux is None else router_aux
        if aux and not self._has_aux:
            # cluster/model_check.py refuses such a run before it starts; this guards direct callers
            raise ValueError("a router balance loss was asked for (learner.moe_aux_loss_coef or "
                             "trainer.warm_start.moe_aux_loss_coef > 0) but the model is not a transformers MoE "
                             "with a router: set it to 0")
        hooks = self._router if not reference else None
        if hooks is not None:  # MoE: measure, and replay the recorded routing (learner/moe.py)
            hooks.begin(mb, measure=measure_routing, replay=hooks.replay)
        try:
            with torch.set_grad_enabled(grad):
                return response_logprobs(model, mb, self.temperature if temperature is None else temperature,
                                         entropy=grad, entropy_grad=entropy_grad,
                                         router_aux_loss=grad and aux and not reference)
        finally:
            if hooks is not None:
                # a grad forward keeps its routing until its backward (which gradient checkpointing
                # recomputes through the routers); anything else is done
                hooks.forward_done() if grad else hooks.end()

    def backward(self, loss: torch.Tensor) -> None:
        # gradient_accumulation_steps is 1 and accumulation is unmanaged: no rescaling by DeepSpeed.
        self.engine.backward(loss, scale_wrt_gas=False)
        if self._router is not None:
            self._router.end()

    def optimizer_step(self, lr: Optional[float] = None, advance_schedule: bool = True) -> tuple[float, float, bool]:
        """One optimizer update (the accumulation boundary). Returns (global grad norm before clipping,
        lr used, whether the update was applied).

        A non-finite gradient skips the update: DeepSpeed's overflow check does it (ZeRO-1/2/3 and
        the bf16 optimizers test the global gradient norm, all-reduced, so every rank decides alike;
        learner/engine.py adds the same check to ZeRO-0 fp32, which has none). Skipped, DeepSpeed
        clears the gradients (its partitions too) and counts it in engine.skipped_steps; parameters
        and optimizer state are untouched, and so is the LR schedule here, as DeepSpeed does for its
        own schedulers: the next update uses the lr this one would have."""
        groups = self.optimizer.param_groups
        saved = [g["lr"] for g in groups]
        if lr is not None:
            for g in groups:
                g["lr"] = lr
        used = groups[0]["lr"]
        self.engine.step()
        applied = self.engine.was_step_applied()
        norm = self.engine.get_global_grad_norm()
        if lr is not None:
            for g, v in zip(groups, saved):
                g["lr"] = v
        if self.all_reduce(torch.tensor([float(applied)], dtype=torch.float64), "sum").item() not in (0, self.world_size):
            raise RuntimeError(f"learner rank {self.rank}: the ranks disagree whether the update was skipped "
                               f"(non-finite gradient check): they no longer hold the same model")
        if advance_schedule and applied:
            self.scheduler.step()
        return (float(norm) if norm is not None else math.nan), float(used), applied

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return t
        import torch.distributed as dist

        dev = t.to(self.device) if self.device.type == "cuda" else t.clone()
        dist.all_reduce(dev, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return dev.cpu()

    def aux_loss_coef(self) -> float:
        return self._aux_coef

    def routing_metrics(self) -> dict[str, float]:
        """MoE measurements since the last call, as raw sums (learner/moe.py); {} for a dense model."""
        return {} if self._router is None else routing_metrics(self._router.reset())

    # ---- training --------------------------------------------------------------------------------
    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        """*Collective.* epochs x mini_batches optimizer steps on this rank's shard; global metrics."""
        self.engine.train()
        return steps.train_on_batch(self, batch, self.algo)

    def reference_kl(self, batch: LearnerBatch) -> list[torch.Tensor]:
        """*Collective.* Per response token, KL(policy || reference) of this rank's sequences
        (algorithm.kl_estimator, at the rollout temperature): PPO's KL-in-reward penalty."""
        return steps.reference_kl(self, batch, self.algo)

    def preference_step(self, batch: LearnerBatch) -> dict[str, float]:
        """*Collective.* One DPO/IPO step on this rank's pairs (sequences 2p chosen, 2p + 1 rejected)."""
        self.engine.train()
        return steps.preference_on_batch(self, batch, self.algo)

    def reset_reference(self, model_path: Optional[str] = None) -> None:
        """*Collective.* The reference model becomes a copy of the policy as it is now, or (model_path)
        of that Hugging Face directory: the warm-started policy is the reference of the KL term and
        of DPO (a resumed run reloads it from the warm start's export)."""
        if self.ref is None:
            raise RuntimeError("reset_reference: this learner has no reference model")
        src = self.engine.module if model_path is None else self.load_model(model_path, self.cfg)
        dst = dict(getattr(self.ref, "module", self.ref).named_parameters())
        for name, p in src.named_parameters():
            z3 = [t for t in (p, dst[name]) if hasattr(t, "ds_id")]
            if z3:  # ZeRO-3: gathered in full, rank 0 writes, the reference re-partitions
                import deepspeed

                with deepspeed.zero.GatheredParameters(z3, modifier_rank=0), torch.no_grad():
                    if self.rank == 0:
                        dst[name].copy_(p.to(dst[name].dtype))
            else:
                with torch.no_grad():
                    dst[name].copy_(p.to(dst[name].dtype))

    def sft_step(self, batch: LearnerBatch, lr: Optional[float] = None,
                 aux_coef: Optional[float] = None) -> dict[str, float]:
        """*Collective.* One supervised step (token-mean cross-entropy on response tokens); `aux_coef`
        overrides the MoE balance loss's coefficient for it."""
        self.engine.train()
        return steps.sft_on_batch(self, batch, lr, aux_coef)

    def sft_steps(self, batches: Sequence[LearnerBatch], lr: Optional[float] = None,
                  aux_coef: Optional[float] = None) -> list[dict[str, float]]:
        """*Collective.* Several supervised steps in one call: a warm start of hundreds of tiny steps
        would otherwise pay a driver round trip (and a batch build) per step."""
        return [self.sft_step(b, lr, aux_coef) for b in batches]

    def probe_logprobs(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                       temperature: Optional[float] = None) -> list[list[float]]:
        """*Collective.* Response logprobs (weight-sync verification); default: the rollout temperature."""
        return steps.probe(self, sequences, prompt_lengths, temperature)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, directory: str, tag: Optional[str] = None, client_state: Optional[dict] = None) -> None:
        """*Collective.* DeepSpeed checkpoint (model, optimizer partitions) + LR schedule + client_state."""
        state = {"relayrl": {"scheduler": self.scheduler.state_dict()}, "client": dict(client_state or {})}
        self.engine.save_checkpoint(directory, tag=tag, client_state=state)

    def load_checkpoint(self, directory: str, tag: Optional[str] = None) -> dict[str, Any]:
        """*Collective.* Restore a save_checkpoint; returns its client_state."""
        path, state = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {directory} (tag {tag or 'latest'})")
        self.scheduler.load_state_dict(state["relayrl"]["scheduler"])
        for g, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            g["lr"] = lr
        return state.get("client", {})

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """*Collective.* The full model state dict (in-memory names) on rank 0, {} elsewhere. Every
        key gets its own tensor (tied weights are cloned: safetensors refuses shared storage)."""
        out: dict[str, torch.Tensor] = {}
        for chunk in _chunks(list(self.engine.module.state_dict(keep_vars=True).items()), 256 << 20):
            with gathered([t for _, t in chunk]):  # ZeRO-3: one collective gather per ~256 MB
                if self.rank == 0:
                    out.update((key, t.detach().to("cpu", copy=True)) for key, t in chunk)
        return out

    def export_hf(self, directory: str, tokenizer_src: Optional[str] = None) -> Optional[str]:
        """*Collective.* A Hugging Face model directory (safetensors, config, tokenizer), written by rank 0."""
        sd = self.full_state_dict()
        if self.rank == 0:
            from transformers import AutoTokenizer

            os.makedirs(directory, exist_ok=True)
            # transformers 5.19 save_pretrained mutates the state dict it is given: pass a copy.
            self.engine.module.save_pretrained(directory, state_dict=dict(sd), safe_serialization=True)
            AutoTokenizer.from_pretrained(tokenizer_src or self.model_path).save_pretrained(directory)
        self._barrier()
        return directory if self.rank == 0 else None

    # ---- weight sync (send side; protocol in learner/weight_protocol.py) -------------------------
    def weight_manifest(self) -> list[ManifestEntry]:
        return self._weight_layout().manifest

    def weight_plan(self, bucket_bytes: int) -> tuple[list[ManifestEntry], list[list[int]]]:
        """(manifest, buckets) for `bucket_bytes`; every rank keeps the plan (ZeRO-3 gathers by it).
        A different bucket size replaces the plan and closes any group joined under the old one."""
        if self._sender is None or self._sender.bucket_bytes != bucket_bytes:
            if self._sender is not None:
                self._sender.close()
            self._sender = WeightSender(self._weight_layout(), self.rank, bucket_bytes)
        return self._sender.layout.manifest, self._sender.buckets

    def weight_sync_address(self) -> tuple[str, int]:
        """Where a rendezvous this rank hosts will listen (ask rank 0): the DeepSpeed group's, passed
        to `build` as master_addr/master_port, and the weight-sync group's, passed to init_weight_sync.
        This node's IP (as Ray reports it: 127.0.0.1 in a local run) and a port already listening
        there; the socket is kept until that store serves from it, so the store listens on this
        address alone and nothing can take the port in between."""
        sock = listen_socket(node_ip())
        host, port = sock.getsockname()[:2]
        self._listening[port] = sock
        return host, port

    def init_weight_sync(self, host: str, port: int, world_size: int, bucket_bytes: Optional[int] = None,
                         timeout_s: float = 120.0, backend: Optional[str] = None) -> tuple[list[ManifestEntry], list[list[int]]]:
        """Rank 0 joins the weight-sync group as rank 0 (blocks until all rollout ranks join);
        other ranks only keep the bucket plan. Call on every rank."""
        if bucket_bytes is not None or self._sender is None:
            self.weight_plan(bucket_bytes or 64 << 20)
        self._sender.close()  # re-initialising (e.g. after a rollout worker was replaced) starts a new group
        if backend in (None, "auto"):
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        self._sender.connect(host, port, world_size, backend, timeout_s, self._listening.pop(port, None))
        return self._sender.layout.manifest, self._sender.buckets

    def broadcast_weights(self, version: int) -> dict[str, float]:
        """*Collective* (ZeRO-3 gathers). Rank 0 sends every bucket; returns bytes and seconds."""
        if self._sender is None:
            raise RuntimeError("weight sync not initialised: call init_weight_sync first")
        out = self._sender.broadcast()
        out["version"] = float(version)
        return out

    def init_weight_file(self, path: str, writer: bool) -> None:
        """Colocated (cluster/colocation.py): updates go to `path`, this node's shared-memory weight
        file, which this rank writes if it is the node's `writer`. Call on every rank."""
        if self._sender is None:
            self.weight_plan(64 << 20)
        self._sender.use_file(path, writer)

    def write_weights_file(self, version: int) -> dict[str, float]:
        """*Collective* (ZeRO-3 gathers). Each node's writer rank writes every bucket to its file."""
        if self._sender is None:
            raise RuntimeError("weight file not set: call init_weight_file first")
        out = self._sender.write_file()
        out["version"] = float(version)
        return out

    def _weight_layout(self) -> WeightLayout:
        if self._layout is None:
            self._layout = WeightLayout(self.engine.module)
        return self._layout

    # ---- tests and housekeeping -----------------------------------------------------------------
    def param_checksum(self) -> dict[str, float]:
        """Sum and sum of squares of the parameters this rank computes with (ZeRO-3: gathered)."""
        total, sq = 0.0, 0.0
        for p in self.engine.module.parameters():
            with gathered([p]):
                d = p.detach().double()
                total += float(d.sum())
                sq += float((d * d).sum())
        return {"sum": total, "sumsq": sq}

    def local_param_checksum(self) -> float:
        """Sum over this rank's own parameter storage, no gather (replicas must agree below ZeRO-3)."""
        return float(sum(p.detach().double().sum() for p in self.engine.module.parameters()))

    def param_shapes(self) -> dict[str, list[int]]:
        return {k: full_shape(t) for k, t in self.engine.module.state_dict(keep_vars=True).items()}

    def node_info(self) -> tuple[str, int]:
        return node_ip(), os.getpid()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def shutdown(self) -> None:
        for sock in self._listening.values():
            sock.close()
        if self._sender is not None:
            self._sender.close()
        with contextlib.suppress(Exception):
            self.engine.destroy()
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _chunks(items: list[tuple[str, torch.Tensor]], max_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive (name, tensor) items in groups of at most max_bytes (full, gathered sizes)."""
    out: list[list[tuple[str, torch.Tensor]]] = []
    size = max_bytes
    for key, t in items:
        nbytes = math.prod(full_shape(t)) * t.element_size()
        if size + nbytes > max_bytes:
            out.append([])
            size = 0
        out[-1].append((key, t))
        size += nbytes
    return out


def node_ip() -> str:
    """This node's IP as Ray sees it (inside a Ray worker), else the address that reaches outside."""
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
        return s.getsockname()[0]
    return "127.0.0.1"


def rendezvous_store(host: str, port: int, rank: int, world_size: int, timeout: timedelta,
                     listen: Optional[socket.socket] = None) -> "torch.distributed.Store":
    """The default group's TCP store: rank 0 serves it from `listen` (or a socket it binds to
    host:port), so it listens on that address only; the other ranks connect to it."""
    from torch.distributed import TCPStore

    if rank != 0:
        return TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    fd = (listen or listen_socket(host, port)).detach()
    try:
        return TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=fd)
    except BaseException:
        os.close(fd)
        raise


def release_shm_segment(addr: str, port: int, rank: int) -> None:
    """DeepSpeed's CPU all-reduce gives each rank a 69 MB shared-memory segment,
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>, and never unlinks it:
    every learner rank ever started kept 69 MB of RAM until reboot (measured: 298 segments, 20 GB of
    /dev/shm, after a day of runs and tests on one machine, and Ray's memory monitor then killed a
    rollout worker). Once init_distributed has returned on every rank (a barrier), each rank has mapped
    every segment; removing the name keeps the memory mapped for the live ranks and frees it when
    they exit, killed or not."""
    path = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
