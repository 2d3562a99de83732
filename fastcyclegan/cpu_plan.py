"""FastGenerator's CPU inference as a recorded plan: the same oneDNN convs and C norm kernel calls, set up once.

A forward on pre-packed weights spends ~0.85 ms of Python besides its kernels at 128x128 fp32 (~3,900 calls:
the op's argument checks, layout and dispatch tests, buffer lookups, module indexing) and as much again in the
calls' own argument handling (bench/results/TUNING.md). The first call for an input shape and dtype runs the
network once through `record`: for each conv + norm site the conv becomes a function of its input alone
(`onednn.conv_call`, its packed weight bound), the norm a function of the conv's output alone
(`norm_cpu.forward_call`, every other argument made), and every norm output goes into a buffer the plan keeps
(the workspace's roles: three for the residual stream whatever the number of blocks); a conv output of
`workspace.LARGE_BYTES` or more goes into a scratch buffer of the plan's, or is made a group of images at a
time, as the unrecorded path runs it (`fast._conv_norm`). Later calls replay the kernel calls: the same calls
on the same operands, so bitwise the values of the unrecorded path.

A plan is made only where every site runs on those two: CPU inference on pre-packed weights
(`convs.runs_packed`), the C kernel in use, and every operand either the input or a buffer of the plan (an
override that computes a site another way is refused, and runs unrecorded). It is replayed while the input's
shape and dtype, the module tree and every parameter's address and version are those recorded (`_Key`), per
thread, and dropped with the workspace (`workspace.forget`) on a move or cast. `disabled()` turns it off for
a block of code (the A/B, tests).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from . import convs, norm_cpu, onednn, ops, workspace
from .dispatch import ThreadSwitch
from .layout import interior, padded_shape
from .reference import GeneratorLayout

_switch = ThreadSwitch()
disabled = _switch.disabled  # this thread's forwards call by call inside its block


class NotPlanned(Exception):
    """A site the plan cannot record; the call runs unrecorded."""


class _Plan:
    """The recorded calls: (conv, its input or None for the network's input, the norm on its output)."""

    __slots__ = ("key", "steps", "head_input")

    def __init__(self, key: _Key, steps: list, head_input: Tensor | None):
        self.key, self.steps, self.head_input = key, steps, head_input

    def replay(self, h0: Tensor) -> Tensor:
        for conv, source, norm in self.steps:
            norm(conv(h0 if source is None else source))
        return self.head_input


class _Key:
    """What a plan holds for: the input's shape and dtype, and the module tree as it was at recording: every
    (dictionary, name, value) that put a parameter or submodule in it, and each parameter's address and
    version (an in-place update, `load_state_dict`, a reassigned parameter or submodule each change one; the
    packed weights follow the same rule). Checked at every call by identities and two integers a parameter,
    ~10 us at 128x128: a key of `generator.parameters()` took 170 us there in place (a dotted name built for
    every module and parameter, their objects cold after the convs; bench/results/TUNING.md). It holds the
    tree's objects of its time: after a change, until the next call records anew."""

    __slots__ = ("shape", "dtype", "entries", "parameters", "state")

    def __init__(self, generator: nn.Module, x: Tensor):
        entries, parameters, stack = [], [], [generator]
        while stack:
            module = stack.pop()
            for table in (module._parameters, module._modules):
                entries.extend((table, name, value) for name, value in table.items())
            parameters.extend(p for p in module._parameters.values() if p is not None)
            stack.extend(child for child in module._modules.values() if child is not None)
        self.shape, self.dtype, self.entries, self.parameters = x.shape, x.dtype, entries, parameters
        self.state = _state(parameters)

    def holds(self, x: Tensor) -> bool:
        """Whether a plan recorded under this key runs x on the tree as it is now."""
        if x.shape != self.shape or x.dtype != self.dtype:
            return False
        return all(table.get(name) is value for table, name, value in self.entries) and (
            _state(self.parameters) == self.state
        )


def _state(parameters: list[Tensor]) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in parameters)


def head_input(generator, x: Tensor, body: Callable) -> Tensor | None:
    """The input of generator's head for x by its plan (recorded at the first call for this key), or None where
    no plan runs this call (the caller runs it unrecorded). `body(h0, site)`: the generator's walk from the
    stem's input h0 to the head's input, each conv + norm site run by `site`."""
    stem = generator.model[generator.layout.stem]
    if _switch.off() or not convs.runs_packed(x, stem) or not norm_cpu.in_use():
        return None
    kept = workspace.per_thread(generator)
    plan = kept.get("plan")
    if plan is not None and plan.key.holds(x):
        return None if plan.head_input is None else plan.replay(generator._stem_input(x))
    key = _Key(generator, x)
    h0 = generator._stem_input(x)
    recorder = _Recorder(h0)
    try:
        out = body(h0, recorder.site)
        plan = _Plan(key, recorder.steps, recorder.kept(out))
    except NotPlanned:
        plan, out = _Plan(key, [], None), None  # refused for this key: unrecorded until the key changes
    kept["plan"] = plan
    return out


class _Recorder:
    """`site` for the recording run: runs each site as a replay will, keeping its calls and buffers."""

    def __init__(self, h0: Tensor):
        self.h0, self.steps, self.buffers = h0, [], {}

    def kept(self, t: Tensor) -> Tensor:
        """t, a view of one of the plan's buffers; NotPlanned for any other tensor (made anew at every call)."""
        storage = t.untyped_storage().data_ptr()
        if not any(b.untyped_storage().data_ptr() == storage for b in self.buffers.values()):
            raise NotPlanned("an operand that is neither the input nor a buffer of the plan")
        return t

    def site(
        self,
        layers: nn.Sequential,
        conv: int,
        h: Tensor,
        *,
        residual: Tensor | None = None,
        relu: bool = False,
        negative_slope: float = 0.0,
        pad: int = 0,
        buffer: tuple | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`fast._conv_norm`'s contract, recorded, large outputs as it runs them: a conv output of
        `workspace.LARGE_BYTES` or more into a scratch buffer of the plan's (one a channel count), or where the
        conv cannot write into one (a transposed conv) a group of images at a time (`workspace.images_per_group`),
        each group's norm writing its part of the site's buffer."""
        layer, norm = layers[conv], layers[GeneratorLayout.norm_after(conv)]
        source = None if h is self.h0 else self.kept(h)
        if residual is not None:
            self.kept(residual)
        cl = h.stride(1) == 1 and h.shape[1] > 1  # channels-last activations (a padded buffer's interior too)
        if not cl or not onednn.usable(h, layer):
            raise NotPlanned("a conv off the pre-packed path")
        shape = convs.output_shape(layer, h)
        scratch, step = None, shape[0]
        if workspace.is_large(shape, h):
            if convs.writes_into(layer, h):
                scratch = workspace.scratch_in(self.buffers, shape, h)
            else:
                step = workspace.images_per_group(shape, h)
        if source is None and step < shape[0]:
            raise NotPlanned("groups of the network's input, which is new at every call")
        owner, role = buffer or (layers, conv)
        out, whole = None, step >= shape[0]
        for start in range(0, shape[0], step):
            part = h if whole else h[start : start + step]
            run_conv = (
                onednn.conv_call(layer, part, None)
                if scratch is None
                else onednn.conv_into_call(layer, part, None, scratch)
            )
            z = run_conv(part)
            if out is None:
                out = workspace.buffer_in(self.buffers, (id(owner), role), (shape[0], *padded_shape(z, pad)[1:]), z)
            # each group's part of the residual and of the output: views of the plan's buffers
            part_residual = residual if whole or residual is None else residual[start : start + step]
            part_out = out if whole else out[start : start + step]
            if ops.implementation_name(z, part_residual, part_out) != "c kernel":  # the op's routing table decides
                raise NotPlanned("a norm the C kernel does not run")
            run_norm = norm_cpu.forward_call(
                z,
                part_residual,
                part_out,
                weight=norm.weight,
                bias=norm.bias,
                relu=relu,
                eps=norm.eps,
                negative_slope=negative_slope,
            )
            run_norm(z)
            self.steps.append((run_conv, source if whole else part, run_norm))
            del z  # freed before the next group's output is made, as `fast._conv_norm` does
        return out, interior(out, pad)
