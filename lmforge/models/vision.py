"""The image side of an image-and-text model: ViT-style patches on the one core's `Block`.

    image (B, C, H, W) -> PatchEmbedding: non-overlapping p x p patches, each flattened and
                          projected to d_model, plus 2-D positions   -> (B, N, d), N = (H/p)(W/p)
                       -> encoder Stack (the same `Block` as every text stack, bidirectional)
                       -> image features (B, N, d)

A patch is an image token: z_i = W vec(x_i) + b + P_i, with x_i the i-th p x p patch (row-major)
and P_i its position, learned or the fixed 2-D sine-cosine table of `sincos_2d_table`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.block import Stack


def sincos_2d_table(rows: int, cols: int, dim: int, base: float = 10000.0) -> Tensor:
    """Fixed 2-D positions for a rows x cols grid of patches, (rows * cols, dim), row-major.

    The first half of the channels encodes the row r, the second half the column c, each with the
    1-D sine-cosine code over dim/4 frequencies w_k = base^(-k / (dim/4)), k = 0 .. dim/4 - 1:

        P(r, c) = [sin(r w), cos(r w), sin(c w), cos(c w)]
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}.")
    quarter = dim // 4
    omega = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    r = torch.arange(rows, dtype=torch.float64)[:, None].expand(rows, cols).reshape(-1)
    c = torch.arange(cols, dtype=torch.float64)[None, :].expand(rows, cols).reshape(-1)
    r_ang, c_ang = r[:, None] * omega, c[:, None] * omega  # (N, dim/4) each
    table = torch.cat([r_ang.sin(), r_ang.cos(), c_ang.sin(), c_ang.cos()], dim=-1)
    return table.float()


class PatchEmbedding(nn.Module):
    """z_i = W vec(x_i) + b + P_i for the N non-overlapping p x p patches of an image.

    The projection is a convolution with kernel = stride = p, which is the same linear map
    applied to every flattened patch (`tests/models/test_vision.py` checks it against
    unfold + matmul).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.image_size is None:
            raise ValueError("PatchEmbedding needs cfg.image_size.")
        p, side = cfg.patch_size, cfg.image_size // cfg.patch_size
        self.image_size, self.channels, self.side = cfg.image_size, cfg.image_channels, side
        self.proj = nn.Conv2d(cfg.image_channels, cfg.d_model, kernel_size=p, stride=p)
        if cfg.image_pos == "learned":
            self.pos = nn.Parameter(torch.zeros(side * side, cfg.d_model))
        else:
            self.register_buffer(
                "sincos", sincos_2d_table(side, side, cfg.d_model), persistent=False
            )
            self.pos = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform on W as the (d, C p p) matrix it is, zero bias, learned positions
        N(0, 0.02). (PyTorch's default conv bias, U(+-1/sqrt(C p^2)), would drown the image signal
        of small patches: +-0.5 for 2x2 grey patches.)"""
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.size(0), -1))
        nn.init.zeros_(self.proj.bias)
        if self.pos is not None:
            nn.init.normal_(self.pos, 0.0, 0.02)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, d)."""
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (
            self.channels,
            self.image_size,
            self.image_size,
        ):
            raise ValueError(
                f"images must be (B, {self.channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(pixels.shape)}."
            )
        z = self.proj(pixels)  # (B, d, H/p, W/p)
        z = z.flatten(2).transpose(1, 2)  # (B, N, d), patches row-major
        pos = self.pos if self.pos is not None else self.sincos
        return z + pos.to(z.dtype)


def image_stack_config(cfg: ModelConfig) -> ModelConfig:
    """The config of the image encoder's blocks: the model's widths and norms, with no 1-D
    position scheme of its own (the patches carry 2-D positions) and no text-only features."""
    return cfg.replace(
        pos="none",
        rope_scaling=None,
        sliding_window=None,
        fusion=None,
        image_size=None,
        heads=(),
    )


class ImageEncoder(nn.Module):
    """Patches -> `n_image_layer` bidirectional blocks of the core -> features (B, N, d).

    With n_image_layer = 0 the features are the patch embeddings themselves (early fusion feeds
    them straight into the text stack)."""

    def __init__(self, cfg: ModelConfig, n_layer: int | None = None) -> None:
        super().__init__()
        self.patches = PatchEmbedding(cfg)
        n = cfg.n_image_layer if n_layer is None else n_layer
        self.stack = Stack(image_stack_config(cfg), n, causal=False) if n > 0 else None

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patches(pixels)  # (B, N, d)
        if self.stack is not None:
            x = self.stack(x).hidden
        return x
