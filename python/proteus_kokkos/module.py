"""CausalGeneticMultiheadAttention: torch.nn.MultiheadAttention's interface over proteus' Kokkos
kernels, with autograd through proteus' backward pass (docs/python.md)."""
import math

import torch
from torch import nn

from . import _core, _runtime

# Keyword arguments of torch.nn.MultiheadAttention that proteus accepts only at their defaults.
_MHA_DEFAULTS = {"add_bias_kv": False, "add_zero_attn": False, "kdim": None, "vdim": None}


class _Router(nn.Module):
    """Upstream's router layout (head_router.linear, no bias), so that state dict keys match."""

    def __init__(self, embed_dim, num_gates, device):
        super().__init__()
        self.linear = nn.Linear(embed_dim, num_gates, bias=False, device=device)


class _Attention(nn.Module):
    """The parameters and DNA buffers, named as upstream's AdaptiveSparseProtoAttention names them.
    The DNA buffers (routing_*) are updated in place by the EMA in training mode and have no
    gradient; gate_to_head is a non-persistent buffer, as upstream's."""

    def __init__(self, embed_dim, num_gates, bias, gate_to_head, device):
        super().__init__()
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, device=device)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias, device=device)
        self.head_router = _Router(embed_dim, num_gates, device)
        self.register_buffer("routing_prototypes", torch.zeros(num_gates, embed_dim, device=device))
        self.register_buffer("routing_usage_ema", torch.zeros(num_gates, device=device))
        self.register_buffer("routing_confidence", torch.zeros(num_gates, device=device))
        self.register_buffer("gate_to_head", torch.tensor(gate_to_head, dtype=torch.int64, device=device),
                             persistent=False)
        if not bias:  # the kernels take biases; these zeros stand in (not parameters, not saved)
            self.register_buffer("_zero_qkv_bias", torch.zeros(3 * embed_dim, device=device), persistent=False)
            self.register_buffer("_zero_proj_bias", torch.zeros(embed_dim, device=device), persistent=False)

    def tensors(self):
        """What the kernels compute with, by the names _core expects. (Read from the modules'
        parameter and buffer dicts: nn.Module's attribute lookup costs more than the lookups.)"""
        qkv, proj = self.qkv._parameters, self.proj._parameters
        buffers = self._buffers
        bias = qkv["bias"] is not None
        return {
            "qkv_weight": qkv["weight"],
            "qkv_bias": qkv["bias"] if bias else buffers["_zero_qkv_bias"],
            "out_weight": proj["weight"],
            "out_bias": proj["bias"] if bias else buffers["_zero_proj_bias"],
            "router_weight": self.head_router.linear._parameters["weight"],
            "prototypes": buffers["routing_prototypes"],
            "usage": buffers["routing_usage_ema"],
            "confidence": buffers["routing_confidence"],
        }


class _RunState:
    """What a module keeps between calls: a plain object (nn.Module's attribute machinery costs
    microseconds per access, several times per training step)."""
    __slots__ = ("bound", "positions", "spare")

    def __init__(self):
        self.bound = None  # what _core computes with: (tensor, data_ptr, shape, strides) of each
        self.positions = {}  # (batch, tokens, device) -> the positions tensor
        self.spare = None  # (stream, TrainingState) a finished backward gave back


class _ProteusFunction(torch.autograd.Function):
    """y = attention(x) with proteus' backward. What the forward selected (kept tokens, active
    heads, candidates) is a constant of the backward, as a top-k is in autograd."""

    @staticmethod
    def forward(ctx, owner, tensors, x, positions, batch, update_dna, adapt_heads, qkv_w, qkv_b, out_w, out_b,
                router_w):
        stream, run = _runtime.stream_handle(x), owner._run
        # The state of a finished backward on this stream is reused: its copies keep their memory.
        spare, run.spare = run.spare, None
        state = spare[1] if spare is not None and spare[0] == stream else _core.TrainingState()
        y = torch.empty_like(x)
        owner._bind(tensors)
        # The statistics are read when asked (last_runtime_stats): the forward returns without waiting
        # for its last kernels, and autograd's host work overlaps them.
        owner._core.forward_training(stream, x, batch, positions, y, state, update_dna, adapt_heads, True)
        ctx.owner, ctx.state, ctx.tensors, ctx.bias = owner, state, tensors, qkv_b is not None
        ctx.save_for_backward(x, positions)  # the state reads them in place: kept alive, checked unchanged
        return y

    @staticmethod
    def backward(ctx, grad_output):
        x, _ = ctx.saved_tensors
        owner, weights = ctx.owner, ctx.tensors  # the tensors the forward computed with
        grads = {k: torch.empty_like(weights[k]) for k in
                 ("qkv_weight", "qkv_bias", "out_weight", "out_bias", "router_weight")}
        grad_input = torch.empty_like(x)
        owner._bind(weights)
        stream = _runtime.stream_handle(x)
        owner._core.backward(stream, ctx.state, grad_output.contiguous(), grad_input, grads)
        owner._run.spare, ctx.state = (stream, ctx.state), None
        router = grads["router_weight"] if owner._router_gradient else None
        return (None, None, grad_input, None, None, None, None, grads["qkv_weight"],
                grads["qkv_bias"] if ctx.bias else None, grads["out_weight"], grads["out_bias"] if ctx.bias else None,
                router)


class CausalGeneticMultiheadAttention(nn.Module):
    """Proteus causal self-attention with torch.nn.MultiheadAttention's constructor and forward.

    CausalGeneticMultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
        add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *,
        seed=None, **config)

    - batch_first defaults to False, as in torch.nn.MultiheadAttention (upstream's drop-in defaults
      to True: pass it explicitly when switching from upstream).
    - dropout, add_bias_kv, add_zero_attn, kdim and vdim are accepted only at their defaults.
    - dtype must be float32 (or None); parameters live on the device the kernels were built for
      (proteus_kokkos.device()); moving them elsewhere makes forward raise, naming the tensor.
    - seed: initial weights and DNA are a pure function of it, identical to the C++ module's with the
      same seed (default: drawn from torch's generator, so torch.manual_seed governs it).
    - config: any field of proteus::Config (docs/algorithm.md, inputs/README.md), e.g. mode="fixed",
      alpha=1.0, token_sparse=True, router_gradient=True.

    forward(query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
            average_attn_weights=True, is_causal=None) -> (output, statistics or None)

    key and value must be None or `query` itself; attn_mask None or the standard causal mask;
    key_padding_mask (B, T), True = padding, zeroes padded tokens' inputs and outputs (as upstream).
    Instead of attention weights (never materialised), need_weights returns this call's statistics.
    The DNA EMA runs in training mode only (upstream also runs it in eval mode): eval() freezes it,
    as it does BatchNorm's running statistics.

    state_dict() keys and shapes are upstream's CausalASPAMultiheadAttention's (attention.qkv.*,
    attention.proj.*, attention.head_router.linear.weight, attention.routing_*), so load_state_dict
    takes an upstream state dict unchanged; upstream's fallback_attention.* entries (the weights of
    its separate nn.MultiheadAttention for cross-attention, which proteus refuses) are ignored.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, seed=None, **config):
        super().__init__()
        given = {"add_bias_kv": add_bias_kv, "add_zero_attn": add_zero_attn, "kdim": kdim, "vdim": vdim}
        for name, value in given.items():
            if value != _MHA_DEFAULTS[name] and not (name in ("kdim", "vdim") and value == embed_dim):
                raise ValueError(f"{name}={value!r}: not supported by proteus (causal self-attention only)")
        if dropout != 0.0:
            raise ValueError(f"dropout={dropout!r}: attention dropout is not supported by proteus (use 0.0)")
        if dtype not in (None, torch.float32):
            raise TypeError(f"dtype={dtype}: proteus kernels run in float32")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        cfg = _core.Config()
        cfg.embed_dim, cfg.num_heads, cfg.bias, cfg.batch_first, cfg.seed = embed_dim, num_heads, bias, batch_first, seed
        for key, value in config.items():
            if key.startswith("_") or not hasattr(cfg, key) or key in ("embed_dim", "num_heads", "bias", "batch_first"):
                raise TypeError(f"unknown keyword argument {key!r} (a field of proteus::Config was expected)")
            setattr(cfg, key, value)
        resolved = cfg.resolved()  # raises ProteusError naming a bad field
        _runtime.ensure_initialized()
        build_device = torch.device(_runtime.device(), torch.cuda.current_device()) if _runtime.device() == "cuda" \
            else torch.device("cpu")
        if device is not None and torch.device(device).type != build_device.type:
            raise ValueError(f"device={device}: this proteus_kokkos build runs on {build_device.type}")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.head_dim = embed_dim // num_heads
        self._core = _core.Module(cfg)
        self._run = _RunState()
        self._dna_update = resolved.dna_enable and resolved.dna_update
        self._router_gradient = resolved.router_gradient
        self.attention = _Attention(embed_dim, resolved.num_gates, bias, list(resolved.gate_to_head),
                                    device or build_device)
        with torch.no_grad():
            self._core.copy_initial(_runtime.stream_handle(self.attention.qkv.weight), self.attention.tensors())

    @property
    def config(self):
        """The resolved proteus::Config (a copy)."""
        return self._core.config

    def extra_repr(self):
        c = self._core.config
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_gates={c.num_gates}, "
                f"batch_first={self.batch_first}, mode={c.mode}, token_sparse={c.token_sparse}, "
                f"router_gradient={c.router_gradient}")

    @property
    def last_runtime_stats(self):
        """Statistics of the most recent forward (a dict, None before the first), as upstream's property
        of that name. Reading them waits for that forward's kernels."""
        return self._core.last_statistics()

    def _bind(self, tensors=None):
        """Points the kernels at `tensors` (default: the module's parameters and buffers). A full
        bind checks every tensor's dtype, device, shape and layout; when the same tensors with the
        same storage, shape and strides are bound already, nothing needs checking again."""
        tensors = self.attention.tensors() if tensors is None else tensors
        run = self._run
        key = tuple((t, t.data_ptr(), t.shape, t.stride()) for t in tensors.values())
        if run.bound is not None and len(key) == len(run.bound) and all(
                a[0] is b[0] and a[1:] == b[1:] for a, b in zip(key, run.bound)):
            return
        run.bound = None
        self._core.bind(tensors)
        run.bound = key

    def _positions_for(self, batch, tokens, device):
        key, run = (batch, tokens, device), self._run
        if key not in run.positions:
            run.positions = {key: torch.arange(tokens, device=device, dtype=torch.int64).repeat(batch)}
        return run.positions[key]

    def _check_call(self, query, key, value, attn_mask, is_causal):
        if not isinstance(query, torch.Tensor):
            raise TypeError(f"query: expected a torch.Tensor, got {type(query).__name__}")
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query: shape {tuple(query.shape)}, expected 3 dimensions ending in embed_dim "
                             f"{self.embed_dim} ({'[B, T, E]' if self.batch_first else '[T, B, E]'})")
        if query.dtype != torch.float32:
            raise TypeError(f"query: dtype {query.dtype}, expected torch.float32")
        if not query.is_contiguous():
            raise ValueError("query: not contiguous (proteus does not copy tensors: call .contiguous() first)")
        for name, other in (("key", key), ("value", value)):
            if other is not None and other is not query:
                raise ValueError(f"{name}: cross-attention is not supported (proteus is causal self-attention: "
                                 f"pass None or the query tensor itself)")
        if is_causal is False:
            raise ValueError("is_causal=False: proteus is causal attention only")
        if attn_mask is not None:
            tokens = query.shape[1] if self.batch_first else query.shape[0]
            mask = attn_mask[0] if attn_mask.dim() == 3 and attn_mask.shape[0] == 1 else attn_mask
            causal = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool, device=mask.device), diagonal=1)
            blocked = mask if mask.dtype == torch.bool else torch.isinf(mask) & (mask < 0)
            if mask.shape != (tokens, tokens) or not torch.equal(blocked, causal) or \
                    (mask.dtype != torch.bool and bool((mask[~causal] != 0).any())):
                raise ValueError(f"attn_mask: only the standard causal mask of shape ({tokens}, {tokens}) is "
                                 f"supported (bool triu(ones, 1), or 0 / -inf)")

    def _padding(self, key_padding_mask, batch, tokens, device):
        if key_padding_mask is None:
            return None
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.shape != (batch, tokens):
            raise ValueError(f"key_padding_mask: expected a tensor of shape ({batch}, {tokens}), got "
                             f"{getattr(key_padding_mask, 'shape', type(key_padding_mask).__name__)}")
        if key_padding_mask.device != device:
            raise ValueError(f"key_padding_mask: on {key_padding_mask.device}, query on {device}")
        if key_padding_mask.dtype == torch.bool:
            return key_padding_mask
        if key_padding_mask.is_floating_point():  # torch's float masks: -inf (or nonzero) = padding
            return key_padding_mask != 0
        raise TypeError(f"key_padding_mask: dtype {key_padding_mask.dtype}, expected bool or float")

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=None):
        self._check_call(query, key, value, attn_mask, is_causal)
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens, _ = x.shape
        pad = self._padding(key_padding_mask, batch, tokens, query.device)
        if pad is not None:
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        rows = x.contiguous()  # [B, T, E]: the kernels read it as [B*T x E]
        positions = self._positions_for(batch, tokens, query.device)
        update_dna = bool(self.training) and self._dna_update
        adapt = bool(self.training)  # the head controller (if on) learns in training mode only
        params = self.attention.tensors()
        trainable = [params["qkv_weight"], self.attention.qkv.bias, params["out_weight"], self.attention.proj.bias,
                     params["router_weight"]]
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [rows] + trainable):
            y = _ProteusFunction.apply(self, params, rows, positions, batch, update_dna, adapt, *trainable)
        else:
            y = torch.empty_like(rows)
            self._bind(params)
            self._core.forward(_runtime.stream_handle(rows), rows, batch, positions, y, update_dna, adapt, True)
        if pad is not None:
            y = y.masked_fill(pad.unsqueeze(-1), 0.0)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return y, (self._core.last_statistics() if need_weights else None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for k in [k for k in state_dict if k.startswith(prefix + "fallback_attention.")]:
            del state_dict[k]  # upstream's separate nn.MultiheadAttention (a path proteus refuses)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def save_hdf5(self, path):
        """Writes the weights, DNA and gate map in docs/hdf5_schema.md's layout (atomically), which
        proteus_driver reads as `[checkpoint] weights = path` and proteus_inspect shows."""
        self._bind()
        self._core.save(_runtime.stream_handle(self.attention.qkv.weight), str(path))

    def dump_dna(self, path, tokens_seen):
        """Appends the current DNA (prototypes, usage, confidence) and `tokens_seen` to the DNA-dump
        time series `path` (created if missing): the driver's dump format, which proteus_inspect and
        tools/plot_dna.py --dump read."""
        self._bind()
        self._core.dump_dna(_runtime.stream_handle(self.attention.qkv.weight), str(path), int(tokens_seen))

    def load_hdf5(self, path):
        """Loads weights and DNA from a proteus checkpoint or weights file (format, shapes, values and
        gate map checked; an error names the file and dataset). The module is unchanged on error."""
        with torch.no_grad():
            own = self.attention.tensors()
            staged = {k: torch.empty_like(v) for k, v in own.items()}
            self._run.bound = None
            self._core.bind(staged)
            try:
                self._core.load(_runtime.stream_handle(own["qkv_weight"]), str(path))
            finally:
                self._bind()
            for k, v in staged.items():
                if self.attention.qkv.bias is None and k in ("qkv_bias", "out_bias"):
                    if bool((v != 0).any()):
                        raise ValueError(f"{path}: /weights/{'qkv_bias' if k == 'qkv_bias' else 'out_bias'} is "
                                         f"nonzero but this module has bias=False")
                    continue
                own[k].copy_(v)

    def reference_forward(self, query, key_padding_mask=None):
        """The C++ module's own drop-in forward (CausalGeneticMultiheadAttention::forward) on the same
        weights and DNA, without autograd: for comparing the two front ends."""
        self._check_call(query, None, None, None, None)
        out = torch.empty_like(query)
        mask = None if key_padding_mask is None else key_padding_mask.to(torch.uint8).contiguous()
        self._bind()
        with torch.no_grad():
            self._core.forward_module(_runtime.stream_handle(query), query, mask, out)
        return out
