"""What a PatchGAN discriminator module or state dict is, or why FastDiscriminator cannot run it.

The 70x70 PatchGAN of the paper (the public `NLayerDiscriminator`, 3 layers, instance norm): five 4x4 convs
with padding 1 and strides 2, 2, 2, 1, 1; LeakyReLU(0.2) after all but the last; an instance norm after the
2nd to 4th (affine in some trained elsewhere). A module is read by its layers in registration order, any
names, nesting and wrappers; a state dict by the public keys (after the prefixes wrappers add).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .recognition import NotConvertible, check_tensor, strip_wrappers, unwrap
from .reference import Discriminator

SLOPE = 0.2
_STRIDES = (2, 2, 2, 1, 1)


class NotAPatchGAN(NotConvertible):
    """The module or state dict is no PatchGAN FastDiscriminator runs; the message says why."""


@dataclass
class DiscriminatorSpec:
    in_channels: int
    ndf: int
    affine: bool
    state: dict[str, Tensor]

    def build(self, cls: type[nn.Module]) -> nn.Module:
        """`cls(in_channels, ndf, affine)` (Discriminator or a subclass) holding these weights."""
        model = cls(self.in_channels, self.ndf, self.affine)
        model.load_state_dict(self.state, strict=True)
        return model


def _expected_shapes(in_channels: int, ndf: int) -> list[tuple[int, ...]]:
    channels = [in_channels, ndf, ndf * 2, ndf * 4, ndf * 8, 1]
    return [(channels[k + 1], channels[k], 4, 4) for k in range(5)]


def describe_discriminator_module(module: nn.Module) -> DiscriminatorSpec:
    """The PatchGAN a module is, or NotAPatchGAN naming the layer that shows why not (batch norm, spectral
    norm, another depth or slope, running statistics, forward hooks...)."""
    if not isinstance(module, nn.Module):
        raise NotAPatchGAN(f"is a {type(module).__name__}; from_module expects an nn.Module")
    module = unwrap(module)
    for name, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:  # spectral_norm (the old API) works through one
            raise NotAPatchGAN(
                f"has forward hooks on '{name or type(module).__name__}' (spectral norm?), which its layers cannot show"
            )
    leaves = [(name, m) for name, m in module.named_modules(remove_duplicate=False) if not list(m.children())]
    convs, norms, got = [], [], []
    for name, layer in leaves:
        if isinstance(layer, nn.Conv2d):
            if layer.kernel_size != (4, 4) or layer.padding != (1, 1) or layer.padding_mode != "zeros":
                raise NotAPatchGAN(f"has a conv that is no 4x4 conv padded by 1 zero: '{name}' is {layer}")
            if layer.dilation != (1, 1) or layer.groups != 1:
                raise NotAPatchGAN(f"has a conv with dilation or groups: '{name}' is {layer}")
            if layer.stride[0] != layer.stride[1]:
                raise NotAPatchGAN(
                    f"has a conv of stride {tuple(layer.stride)}: '{name}'; the PatchGAN's strides are square "
                    f"({', '.join(map(str, _STRIDES))} in both directions)"
                )
            convs.append((name, layer))
            got.append(f"conv/{layer.stride[0]}")
        elif isinstance(layer, nn.InstanceNorm2d):
            if layer.track_running_stats:
                raise NotAPatchGAN(f"normalizes with running statistics: layer '{name}' is {layer}")
            if layer.eps != 1e-5:
                raise NotAPatchGAN(f"has an instance norm with eps={layer.eps}: '{name}'; the PatchGAN's is 1e-05")
            norms.append((name, layer))
            got.append("norm")
        elif isinstance(layer, nn.LeakyReLU):
            if layer.negative_slope != SLOPE:
                raise NotAPatchGAN(f"has a LeakyReLU of slope {layer.negative_slope}: '{name}'; the PatchGAN's is 0.2")
            got.append("leaky")
        else:
            why = "batch norm; FastDiscriminator fuses instance norm" if isinstance(layer, nn.BatchNorm2d) else None
            raise NotAPatchGAN(
                f"uses {why}: layer '{name}' is {layer}"
                if why
                else f"has a layer FastDiscriminator does not run: '{name}' is {layer}"
            )
    expected = ["conv/2", "leaky"] + [t for s in _STRIDES[1:4] for t in (f"conv/{s}", "norm", "leaky")] + ["conv/1"]
    if got != expected:
        k = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        where = f"at layer '{leaves[k][0]}'" if k < len(leaves) else "at its end"
        raise NotAPatchGAN(
            f"is no 3-layer 70x70 PatchGAN {where}: its layers run {' '.join(got)}, the PatchGAN's {' '.join(expected)}"
        )
    affine = [n.affine for _, n in norms]
    if len(set(affine)) != 1:
        raise NotAPatchGAN(f"has affine norms and plain ones ({', '.join(n for n, _ in norms)}); expected one kind")
    state = {}
    for (_, conv), index in zip(convs, Discriminator.CONVS):
        state[f"model.{index}.weight"] = conv.weight.detach()
        if conv.bias is not None:
            state[f"model.{index}.bias"] = conv.bias.detach()
    if affine[0]:
        for (_, norm), index in zip(norms, Discriminator.CONVS[1:4]):
            state[f"model.{index + 1}.weight"], state[f"model.{index + 1}.bias"] = (
                norm.weight.detach(),
                norm.bias.detach(),
            )
    return describe_discriminator_state(state)


def describe_discriminator_state(state: Mapping[str, Tensor]) -> DiscriminatorSpec:
    """The PatchGAN a state dict in the public layout holds (module. and _orig_mod. prefixes allowed), or
    NotAPatchGAN naming the key that shows why not. Allocates nothing but the zero biases of convs saved
    without one."""
    flat = {strip_wrappers(k): v for k, v in state.items()}
    first = flat.get("model.0.weight")
    if not isinstance(first, Tensor) or first.dim() != 4:
        raise NotAPatchGAN(f"has no 'model.0.weight' conv (keys: {sorted(flat)[:8]})")
    in_channels, ndf = first.shape[1], first.shape[0]
    affine = "model.3.weight" in flat
    wanted = {f"model.{i}.{p}" for i in Discriminator.CONVS for p in ("weight", "bias")}
    wanted |= {f"model.{i + 1}.{p}" for i in Discriminator.CONVS[1:4] for p in ("weight", "bias")} if affine else set()
    unknown = sorted(set(flat) - wanted)
    if unknown:
        raise NotAPatchGAN(f"has keys no 3-layer PatchGAN has: {unknown[:5]}")
    out: dict[str, Tensor] = {}
    for index, shape in zip(Discriminator.CONVS, _expected_shapes(in_channels, ndf)):
        key = f"model.{index}.weight"
        weight = flat.get(key)
        if weight is None:
            raise NotAPatchGAN(f"has no '{key}'")
        check_tensor(key, weight, NotAPatchGAN)
        if tuple(weight.shape) != shape:
            raise NotAPatchGAN(
                f"does not fit a PatchGAN with ndf={ndf}: '{key}' is {tuple(weight.shape)}, expected {shape}"
            )
        bias = flat.get(f"model.{index}.bias")
        bias = weight.new_zeros(shape[0]) if bias is None else bias
        check_tensor(f"model.{index}.bias", bias, NotAPatchGAN)
        if tuple(bias.shape) != (shape[0],):
            raise NotAPatchGAN(f"'model.{index}.bias' is {tuple(bias.shape)}, expected ({shape[0]},)")
        out[key], out[f"model.{index}.bias"] = weight, bias
        if affine and index in Discriminator.CONVS[1:4]:
            for p in ("weight", "bias"):
                norm_key = f"model.{index + 1}.{p}"
                t = flat.get(norm_key)
                if t is None or tuple(t.shape) != (shape[0],):
                    got = None if t is None else tuple(t.shape)
                    raise NotAPatchGAN(f"'{norm_key}' is {got}, expected ({shape[0]},) (an affine norm)")
                check_tensor(norm_key, t, NotAPatchGAN)
                out[norm_key] = t
    return DiscriminatorSpec(in_channels, ndf, affine, out)
