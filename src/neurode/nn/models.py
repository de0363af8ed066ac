"""Image classifiers whose residual blocks are ODE blocks (ANODE, MALI, Chen et al.).

- :class:`ConvODEFunc` — ``f(t, y) = norm(conv(relu(norm(conv(y)))))``, with
  ``t`` optionally concatenated to the input of each convolution as an extra
  constant channel (Chen et al.'s ``ConcatConv2d``).
- :class:`SqueezeNextODEFunc` — the SqueezeNext residual branch
  (1×1 reduce, 1×1 reduce, 3×1, 1×3, 1×1 expand) as ``f``.
- :class:`ODEResNet` — stem, stages of (downsampling block → ODE block(s)),
  global average pool, linear head.
- :class:`SqueezeNextODE` — the same skeleton with SqueezeNext functions.
- :func:`build_model` — the builder the ``neurode train`` command uses.

Every model exposes :meth:`ode_blocks`, :meth:`set_solver` (switch gradient
method / solver / steps of every ODE block without touching weights),
:meth:`reset_nfe`, and the summed ``nfe_forward`` / ``nfe_backward``.

Normalisation (``norm=``): ``"batch"`` (ANODE's choice), ``"group"``
(GroupNorm, batch-independent, so multi-process gradients equal single-process
ones exactly), or ``"none"``. A BatchNorm inside ``f`` is evaluated at every
stage of every step; its running statistics are updated by the forward solve
only (replays leave them alone, see :class:`~neurode.nn.ODEBlock`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..odeint import GradientLike, MethodLike
from .odeblock import ODEBlock

__all__ = [
    "ConvODEFunc",
    "SqueezeNextODEFunc",
    "ODEResNet",
    "SqueezeNextODE",
    "MODELS",
    "NORMS",
    "build_model",
    "make_norm",
]

NORMS = ("batch", "group", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"batch"`` → BatchNorm2d, ``"group"`` → GroupNorm (≤ 8 groups), ``"none"`` → Identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {list(NORMS)}")


class _TimeConv(nn.Module):
    """A convolution that optionally sees ``t`` as one more input channel."""

    def __init__(self, cin: int, cout: int, kernel, padding, time: bool, bias: bool):
        super().__init__()
        self.time = time
        self.conv = nn.Conv2d(cin + int(time), cout, kernel, padding=padding, bias=bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if self.time:
            tt = t.to(x.dtype).expand(x.shape[0], 1, x.shape[2], x.shape[3])
            x = torch.cat([x, tt], dim=1)
        return self.conv(x)


class ConvODEFunc(nn.Module):
    """``f(t, y) = norm₂(conv₂(relu(norm₁(conv₁(y)))))`` (3×3 convs, same width).

    Args:
        channels: input = output channels.
        norm: ``"batch"``, ``"group"`` or ``"none"``.
        time: concatenate ``t`` as an extra channel to each conv's input.
        hidden: width of the middle activation (default ``channels``).
    """

    def __init__(
        self, channels: int, norm: str = "batch", time: bool = False, hidden: int | None = None
    ):
        super().__init__()
        hidden = hidden or channels
        bias = norm == "none"
        self.conv1 = _TimeConv(channels, hidden, 3, 1, time, bias)
        self.norm1 = make_norm(norm, hidden)
        self.conv2 = _TimeConv(hidden, channels, 3, 1, time, bias)
        self.norm2 = make_norm(norm, channels)
        self.relu = nn.ReLU()

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        h = self.relu(self.norm1(self.conv1(t, y)))
        return self.norm2(self.conv2(t, h))


class SqueezeNextODEFunc(nn.Module):
    """The SqueezeNext residual branch as ``f`` (Gholami et al. 2018):
    1×1 (C→C/2) → 1×1 (C/2→C/4) → 3×1 (C/4→C/2) → 1×3 (C/2→C/2) → 1×1 (C/2→C),
    each conv followed by norm and ReLU except the last (norm only).
    """

    def __init__(self, channels: int, norm: str = "batch", time: bool = False):
        super().__init__()
        c2, c4 = max(1, channels // 2), max(1, channels // 4)
        bias = norm == "none"
        specs = [
            (channels, c2, (1, 1), (0, 0)),
            (c2, c4, (1, 1), (0, 0)),
            (c4, c2, (3, 1), (1, 0)),
            (c2, c2, (1, 3), (0, 1)),
            (c2, channels, (1, 1), (0, 0)),
        ]
        self.convs = nn.ModuleList(_TimeConv(a, b, k, p, time, bias) for a, b, k, p in specs)
        self.norms = nn.ModuleList(make_norm(norm, b) for _, b, _, _ in specs)
        self.relu = nn.ReLU()

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        h = y
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(t, h))
            if i < last:
                h = self.relu(h)
        return h


def _down(cin: int, cout: int, stride: int, norm: str) -> nn.Sequential:
    """Downsampling block between stages: 3×3 conv (stride) → norm → ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none"),
        make_norm(norm, cout),
        nn.ReLU(),
    )


class _ODEClassifier(nn.Module):
    """Stem → [downsample → ODE block × depth] per stage → pool → linear."""

    func_cls: type[nn.Module] = ConvODEFunc

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        depth: int = 1,
        strides: Sequence[int] | None = None,
        norm: str = "batch",
        time: bool = False,
        method: MethodLike = "rk2",
        steps: int | None = 2,
        step_size: float | None = None,
        t1: float = 1.0,
        gradient: GradientLike = "checkpoint",
        recompute: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-4,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive integers, got {widths}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
        strides = list(strides) if strides is not None else [1] + [2] * (len(widths) - 1)
        if len(strides) != len(widths):
            raise ValueError(f"strides {strides} and widths {widths} differ in length")
        self.config = dict(
            num_classes=num_classes,
            in_channels=in_channels,
            widths=widths,
            depth=depth,
            strides=strides,
            norm=norm,
            time=time,
        )
        self.stem = _down(in_channels, widths[0], 1, norm)
        stages = []
        cin = widths[0]
        for w, s in zip(widths, strides):
            layers: list[nn.Module] = [_down(cin, w, s, norm)]
            for _ in range(depth):
                block = ODEBlock(
                    self._make_func(w, norm, time), 0.0, t1, method=method, steps=steps,
                    step_size=step_size, gradient=gradient, recompute=recompute, rtol=rtol,
                    atol=atol,
                )  # fmt: skip
                layers.append(block)
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def _make_func(self, channels: int, norm: str, time: bool) -> nn.Module:
        return self.func_cls(channels, norm=norm, time=time)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(self.stem(x))
        return self.head(self.pool(h).flatten(1))

    # -- ODE-block management ---------------------------------------------
    def ode_blocks(self) -> list[ODEBlock]:
        return [m for m in self.modules() if isinstance(m, ODEBlock)]

    def set_solver(
        self,
        *,
        gradient: GradientLike = None,
        method: MethodLike = None,
        steps: int | None = None,
        recompute: bool | None = None,
    ) -> _ODEClassifier:
        """Change gradient method / solver / fixed steps / recompute of every ODE block."""
        for b in self.ode_blocks():
            if gradient is not None:
                b.gradient = gradient
            if method is not None:
                b.method = method
            if steps is not None:
                b.options = {**b.options, "steps": steps}
                b.options.pop("step_size", None)
            if recompute is not None:
                b.recompute = recompute
        return self

    def reset_nfe(self) -> None:
        for b in self.ode_blocks():
            b.reset_nfe()

    @property
    def nfe_forward(self) -> int:
        return sum(b.nfe_forward for b in self.ode_blocks())

    @property
    def nfe_backward(self) -> int:
        return sum(b.nfe_backward for b in self.ode_blocks())


class ODEResNet(_ODEClassifier):
    """ODE-ResNet: the residual blocks of a ResNet become ODE blocks.

    ``stem`` (3×3 conv-norm-ReLU) → for each width ``w`` in ``widths``: a
    downsampling block (3×3 conv with stride 1 for the first stage, 2 after,
    norm, ReLU) followed by ``depth`` ODE blocks with
    :class:`ConvODEFunc` (``f`` = conv-norm-ReLU-conv-norm) → global average
    pool → linear. Default widths ``(16, 32, 64, 128)`` (four stages);
    ``widths=(8, 16, 16, 32)`` trains on digits on a CPU in seconds.

    Solver arguments (``method``, ``steps``, ``step_size``, ``t1``,
    ``gradient``, ``recompute``, ``rtol``/``atol``) are passed to every
    :class:`~neurode.nn.ODEBlock`.
    """

    func_cls = ConvODEFunc


class SqueezeNextODE(_ODEClassifier):
    """SqueezeNext-ODE (ANODE): the ODE-ResNet skeleton with
    :class:`SqueezeNextODEFunc` as ``f`` (a cheaper, low-rank residual branch)."""

    func_cls = SqueezeNextODEFunc


MODELS: dict[str, type[_ODEClassifier]] = {
    "odenet": ODEResNet,
    "oderesnet": ODEResNet,
    "sqnxt": SqueezeNextODE,
    "squeezenext": SqueezeNextODE,
}


def build_model(name: str, num_classes: int, in_channels: int, **kwargs) -> _ODEClassifier:
    """A classifier by name (``odenet``/``oderesnet``, ``sqnxt``/``squeezenext``).

    ``kwargs`` go to the model's constructor (``widths``, ``depth``, ``norm``,
    ``time``, ``method``, ``steps``, ``gradient``, ``recompute``, ...).
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](num_classes=num_classes, in_channels=in_channels, **kwargs)
