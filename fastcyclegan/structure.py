"""What a state dict or a module is, read off its structure: is it a ResNet generator, with which
num_blocks, channels, ngf and affine norms, and its weights under the public checkpoint keys.

Structure first, names second: the tensors of a state dict are grouped by the module that owns them, in the
order the modules were registered (their execution order in every generator we know), and matched against
the layer sequence of the paper's generator by shape. Attribute names (`conv_block` or `block`, `model` or
`main`/`res`), wrappers (`module.`, `_orig_mod.`) and nesting do not matter. Every shape and count is
checked arithmetically before anything is allocated, and a refusal names the layer or key that shows why.

A state dict cannot tell reflection from zero or replicate padding: it is read as the public default,
reflection. `describe_module` sees the layers and refuses the others, naming them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .recognition import NotConvertible, check_tensor, strip_wrappers, unwrap
from .reference import GeneratorLayout

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


class NotAGenerator(NotConvertible):
    """The state dict or module is not a ResNet generator FastGenerator can run; the message says why."""


@dataclass(frozen=True)
class GeneratorSpec:
    """A recognised ResNet generator: its constructor arguments and its weights under the public keys."""

    num_blocks: int
    in_channels: int
    out_channels: int
    ngf: int
    affine: bool
    state: dict[str, Tensor]

    @property
    def config(self) -> dict:
        return {
            "num_blocks": self.num_blocks,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "ngf": self.ngf,
            "affine": self.affine,
        }

    def build(self, cls: type[nn.Module]) -> nn.Module:
        """`cls(**config)` (Generator or a subclass with its constructor) holding these weights."""
        model = cls(**self.config)
        model.load_state_dict(self.state, strict=True)
        return model


@dataclass
class _Group:
    """The tensors of one module: prefix 'model.10.conv_block.1' -> {'weight': ..., 'bias': ...}."""

    prefix: str
    tensors: dict[str, Tensor]

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


def _groups(state: Mapping[str, Tensor]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise NotAGenerator(f"has a key that is not a string: {key!r} ({type(key).__name__})")
        prefix, _, name = strip_wrappers(key).rpartition(".")
        groups.setdefault(prefix, _Group(prefix, {})).tensors[name] = value
    return list(groups.values())


def _classify(group: _Group) -> str:
    """'conv' (4-D weight), 'norm' (1-D weight and bias), 'stats' (running statistics only) or refuses."""
    names = set(group.tensors)
    weight = group.tensors.get("weight")
    if names & set(_RUNNING_STATS):
        if "weight" in names or "bias" in names:
            raise NotAGenerator(
                f"uses batch norm (or an instance norm that tracks running statistics): '{group.key('running_mean')}'"
                " beside a learned weight; FastGenerator fuses instance norm with per-image statistics only"
            )
        return "stats"  # buffers that pre-0.4 PyTorch saved for InstanceNorm; the public code deletes them too
    if weight is not None and weight.dim() == 4 and names <= {"weight", "bias"}:
        return "conv"
    if weight is not None and weight.dim() == 1 and names == {"weight", "bias"}:
        return "norm"
    shapes = {n: tuple(t.shape) for n, t in group.tensors.items()}
    raise NotAGenerator(f"has tensors that are no layer of a ResNet generator: '{group.prefix}' holds {shapes}")


def _refuse_known_others(convs: list[_Group]) -> None:
    """Name the architectures people mistake for the ResNet generator, by their tell-tale layers."""
    kernels = {tuple(g.tensors["weight"].shape[2:]) for g in convs}
    if convs and (4, 4) in kernels:
        first, last = convs[0].tensors["weight"], convs[-1].tensors["weight"]
        if last.shape[0] == 1 and first.shape[2:] == (4, 4):
            raise NotAGenerator(
                f"is a PatchGAN discriminator ('{convs[-1].key('weight')}' has 1 output channel, 4x4 kernels), "
                "not a ResNet generator"
            )
        raise NotAGenerator(
            f"is a U-Net generator (4x4 convs such as '{convs[0].key('weight')}' {tuple(first.shape)}), not a "
            "ResNet generator"
        )


def _expected_convs(num_blocks: int, in_channels: int, out_channels: int, ngf: int) -> list[tuple[str, tuple]]:
    """(role, weight shape) of every conv in execution order; transposed convs store (in, out, k, k)."""
    c1, c2, c4 = ngf, 2 * ngf, 4 * ngf
    convs = [("stem", (c1, in_channels, 7, 7)), ("down", (c2, c1, 3, 3)), ("down", (c4, c2, 3, 3))]
    convs += [("block", (c4, c4, 3, 3))] * (2 * num_blocks)
    convs += [("up", (c4, c2, 3, 3)), ("up", (c2, c1, 3, 3)), ("head", (out_channels, c1, 7, 7))]
    return convs


def _canonical_keys(num_blocks: int) -> list[tuple[str, str]]:
    """(conv prefix, norm prefix or '') in execution order, under the public checkpoint keys."""
    at = GeneratorLayout(num_blocks)
    pairs = []
    for conv in at.conv_keys():
        if conv == f"model.{at.head}":
            pairs.append((conv, ""))
            continue
        parent, _, index = conv.rpartition(".")
        pairs.append((conv, f"{parent}.{GeneratorLayout.norm_after(int(index))}"))
    return pairs


def _natural(prefix: str) -> list:
    """Sort key reading the numbers in a module path as numbers: model.2 before model.10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", prefix)]


def describe_state(state: Mapping[str, Tensor]) -> GeneratorSpec:
    """The generator a state dict holds, or NotAGenerator saying why it is none. Allocates nothing but the
    zero biases of convs saved without one (exact: the norm after them removes any per-channel constant).

    The modules are matched in the state dict's own order (registration order); when that fails, in the
    natural order of their names, as files that sort their keys (safetensors) store them.
    """
    groups = _groups(state)
    try:
        return _match(groups)
    except NotAGenerator as first_error:
        ordered = sorted(groups, key=lambda g: _natural(g.prefix))
        if [g.prefix for g in ordered] == [g.prefix for g in groups]:
            raise
        try:
            return _match(ordered)
        except NotAGenerator:
            raise first_error from None


def _match(groups: list[_Group]) -> GeneratorSpec:
    _refuse_known_others([g for g in groups if getattr(g.tensors.get("weight"), "ndim", 0) == 4])
    classified = [(g, _classify(g)) for g in groups]
    groups = [g for g, kind in classified if kind != "stats"]
    kinds = [kind for _, kind in classified if kind != "stats"]
    for g in groups:
        for name, t in g.tensors.items():
            check_tensor(g.key(name), t, NotAGenerator)
    convs = [g for g, k in zip(groups, kinds) if k == "conv"]
    if not convs:
        raise NotAGenerator(f"has no conv weights (first modules: {[g.prefix for g in groups[:6]]})")
    if len(convs) < 6 or len(convs) % 2:
        raise NotAGenerator(
            f"has {len(convs)} convs; a ResNet generator has 6 + 2 per residual block (stem, 2 down, blocks, "
            f"2 up, head)"
        )
    num_blocks = (len(convs) - 6) // 2
    stem, head = convs[0].tensors["weight"], convs[-1].tensors["weight"]
    ngf, in_channels, out_channels = stem.shape[0], stem.shape[1], head.shape[0]
    # every conv but the head is followed by a norm: affine weights after all of them, or after none
    norms_after = [i + 1 < len(kinds) and kinds[i + 1] == "norm" for i, k in enumerate(kinds) if k == "conv"]
    affine = any(norms_after[:-1])
    if norms_after[-1]:
        raise NotAGenerator(f"has a norm after its last conv '{convs[-1].prefix}'; the generator's head has none")
    if affine and not all(norms_after[:-1]):
        missing = next(c.prefix for c, has in zip(convs, norms_after[:-1]) if not has)
        raise NotAGenerator(f"has affine norms after some convs but none after '{missing}'")
    if kinds.count("norm") != (len(convs) - 1 if affine else 0):
        raise NotAGenerator("has norm weights that follow no conv")
    _check_dropout(convs[3:-3])

    expected = _expected_convs(num_blocks, in_channels, out_channels, ngf)
    out: dict[str, Tensor] = {}
    conv_index = {id(g): i for i, g in enumerate(groups)}
    for (role, shape), group, (conv_key, norm_key) in zip(expected, convs, _canonical_keys(num_blocks)):
        weight = group.tensors["weight"]
        if tuple(weight.shape) != shape:
            hint = (
                " (a conv where a transposed conv belongs: an upsample + conv decoder)"
                if role == "up" and tuple(weight.shape) == (shape[1], shape[0], *shape[2:])
                else ""
            )
            raise NotAGenerator(
                f"does not fit a ResNet generator with ngf={ngf}, {num_blocks} blocks: '{group.key('weight')}' "
                f"({role} conv) is {tuple(weight.shape)}, expected {shape}{hint}"
            )
        channels = shape[1] if role == "up" else shape[0]
        bias = group.tensors.get("bias")
        if bias is None:
            bias = weight.new_zeros(channels)
        elif tuple(bias.shape) != (channels,):
            raise NotAGenerator(f"'{group.key('bias')}' is {tuple(bias.shape)}, expected ({channels},)")
        out[f"{conv_key}.weight"], out[f"{conv_key}.bias"] = weight, bias
        if affine and norm_key:
            norm = groups[conv_index[id(group)] + 1]
            for name in ("weight", "bias"):
                if tuple(norm.tensors[name].shape) != (channels,):
                    raise NotAGenerator(
                        f"'{norm.key(name)}' is {tuple(norm.tensors[name].shape)}, expected ({channels},)"
                    )
                out[f"{norm_key}.{name}"] = norm.tensors[name]
    return GeneratorSpec(num_blocks, in_channels, out_channels, ngf, affine, out)


_TRAILING_INDEX = re.compile(r"\.(\d+)$")


def _check_dropout(block_convs: list[_Group]) -> None:
    """In the public layout a residual block's convs sit at conv_block.1 and .5; with use_dropout=True the
    second one moves to .6 (the Dropout between them has no weights): that is the only trace it leaves."""
    for first, second in zip(block_convs[::2], block_convs[1::2]):
        a, b = _TRAILING_INDEX.search(first.prefix), _TRAILING_INDEX.search(second.prefix)
        same_block = first.prefix.rpartition(".")[0] == second.prefix.rpartition(".")[0]
        if a and b and same_block and int(b.group(1)) - int(a.group(1)) == 5:
            raise NotAGenerator(
                f"has dropout in its residual blocks (use_dropout=True: the second conv is '{second.prefix}', one "
                "index further than without); FastGenerator has none"
            )


# ----------------------------------------------------------------------------------------------------------
# modules: the layers themselves show the padding and norm flags a state dict cannot

_REFUSED_LAYERS = {
    nn.Dropout: "dropout (use_dropout=True); FastGenerator has none",
    nn.BatchNorm2d: "batch norm; FastGenerator fuses instance norm with per-image statistics only",
    nn.ReplicationPad2d: "replicate padding; FastGenerator pads by reflection",
    nn.ZeroPad2d: "zero padding; FastGenerator pads by reflection",
    nn.Upsample: "an upsample + conv decoder; FastGenerator's decoder is transposed convs",
    nn.UpsamplingNearest2d: "an upsample + conv decoder; FastGenerator's decoder is transposed convs",
    nn.UpsamplingBilinear2d: "an upsample + conv decoder; FastGenerator's decoder is transposed convs",
}
_ALLOWED_LAYERS = (nn.ReflectionPad2d, nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.ReLU, nn.Tanh)


def describe_module(module: nn.Module) -> GeneratorSpec:
    """The generator a module is (any attribute names, nesting and wrappers), or NotAGenerator naming the
    layer that shows why not: batch norm, dropout, zero or replicate padding, an upsample decoder, running
    statistics, or anything that is not pad, conv, instance norm, ReLU or Tanh."""
    if not isinstance(module, nn.Module):
        raise NotAGenerator(f"is a {type(module).__name__}; from_module expects an nn.Module")
    module = unwrap(module)
    for name, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            raise NotAGenerator(
                f"has forward hooks on '{name or type(module).__name__}': they can change what it computes, which "
                "its layers cannot show; remove them to convert"
            )
    # every use of a layer, in registration order (a ReLU object used twice counts twice)
    leaves = [(name, m) for name, m in module.named_modules(remove_duplicate=False) if not list(m.children())]
    pending_pad = 0
    for name, layer in leaves:
        for kind, why in _REFUSED_LAYERS.items():
            if isinstance(layer, kind):
                raise NotAGenerator(f"uses {why}: layer '{name}' is {layer}")
        if isinstance(layer, nn.InstanceNorm2d) and layer.track_running_stats:
            raise NotAGenerator(
                f"normalizes with running statistics: layer '{name}' is {layer} (track_running_stats=True); "
                "FastGenerator uses each image's own statistics"
            )
        if not isinstance(layer, _ALLOWED_LAYERS):
            raise NotAGenerator(f"has a layer FastGenerator does not run: '{name}' is {layer}")
        if isinstance(layer, nn.InstanceNorm2d) and layer.eps != 1e-5:
            raise NotAGenerator(f"has an instance norm with eps={layer.eps}: '{name}'; the generator's is 1e-05")
        if isinstance(layer, nn.ConvTranspose2d) and (
            layer.stride != (2, 2)
            or layer.padding != (1, 1)
            or layer.output_padding != (1, 1)
            or layer.dilation != (1, 1)
            or layer.groups != 1
            or layer.kernel_size != (3, 3)
        ):
            raise NotAGenerator(f"has a transposed conv that does not exactly double H and W: '{name}' is {layer}")
        if isinstance(layer, nn.ReflectionPad2d):
            if len(set(layer.padding)) != 1:
                raise NotAGenerator(f"pads unevenly: '{name}' is {layer}; the generator pads every side alike")
            pending_pad = layer.padding[0]
        elif isinstance(layer, nn.Conv2d):
            _check_conv_padding(name, layer, pending_pad)
            pending_pad = 0
    _check_sequence([(name, layer) for name, layer in leaves if not isinstance(layer, nn.ReflectionPad2d)])
    return describe_state(module.state_dict())


def _token(layer: nn.Module) -> str:
    """What a layer is in the generator's grammar: conv kxk with its stride, transposed conv, norm, ReLU, Tanh."""
    if isinstance(layer, nn.ConvTranspose2d):
        return "convT"
    if isinstance(layer, nn.Conv2d):
        return f"conv{layer.kernel_size[0]}x{layer.kernel_size[1]}/{layer.stride[0]}"
    for kind, token in ((nn.InstanceNorm2d, "norm"), (nn.ReLU, "relu"), (nn.Tanh, "tanh")):
        if isinstance(layer, kind):
            return token
    return type(layer).__name__


def _check_sequence(layers: list[tuple[str, nn.Module]]) -> None:
    """The layers that shape the output (convs, norms, activations; pads are checked with their conv) are
    the paper's, in its order: c7s1 norm relu, 2 x (3x3/2 conv norm relu), n blocks of (3x3 conv norm relu
    3x3 conv norm), 2 x (transposed conv norm relu), 7x7 conv tanh. What a forward computes beyond its
    layers (an activation after the residual add written as F.relu) cannot be seen here."""
    got = [_token(layer) for _, layer in layers]
    blocks = max(0, (len(got) - 17) // 5)
    expected = ["conv7x7/1", "norm", "relu"] + ["conv3x3/2", "norm", "relu"] * 2
    expected += ["conv3x3/1", "norm", "relu", "conv3x3/1", "norm"] * blocks
    expected += ["convT", "norm", "relu"] * 2 + ["conv7x7/1", "tanh"]
    for k, (token, want) in enumerate(zip(got, expected)):
        if token != want:
            name, layer = layers[k]
            raise NotAGenerator(
                f"differs from the paper's ResNet generator at layer '{name}' ({layer}): a {token} where the "
                f"generator has a {want}"
            )
    if len(got) != len(expected):
        extra = f"ends after '{layers[-1][0]}'" if len(got) < len(expected) else f"has '{layers[len(expected)][0]}'"
        raise NotAGenerator(
            f"differs from the paper's ResNet generator: {len(got)} convs, norms and activations where a generator "
            f"of {blocks} blocks has {len(expected)} (it {extra})"
        )


def _check_conv_padding(name: str, conv: nn.Conv2d, reflected: int) -> None:
    """A stride-1 conv reads a reflection-padded input: a ReflectionPad2d before it, or its own
    padding_mode='reflect'; stride-2 convs pad 1 with zeros, as in the paper."""
    if conv.dilation != (1, 1) or conv.groups != 1 or conv.stride not in ((1, 1), (2, 2)):
        raise NotAGenerator(f"has a conv with dilation, groups or an unusual stride: '{name}' is {conv}")
    own = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    if conv.stride == (2, 2):
        if conv.padding != (1, 1) or conv.padding_mode != "zeros" or reflected:
            raise NotAGenerator(f"has a stride-2 conv padded otherwise than by 1 zero: '{name}' is {conv}")
        return
    if own and conv.padding_mode == "zeros":
        raise NotAGenerator(f"uses zero padding: conv '{name}' pads by itself with zeros ({conv})")
    if own and conv.padding_mode != "reflect":
        raise NotAGenerator(f"uses {conv.padding_mode} padding: conv '{name}' is {conv}; FastGenerator reflects")
    if reflected + own != conv.kernel_size[0] // 2:
        raise NotAGenerator(
            f"is no ResNet generator: conv '{name}' ({conv}) reads its input padded by {reflected + own}, where "
            f"the generator's {conv.kernel_size[0]}x{conv.kernel_size[1]} convs read it reflection-padded by "
            f"{conv.kernel_size[0] // 2}"
        )
