"""Model compression (模型压缩): pruning, distillation and quantization on the one core.

- `prune`: unstructured magnitude pruning with masks that survive fine-tuning;
- `structured`: FFN neurons and attention heads removed by importance (the matrices shrink);
- `pipeline`: prune -> distill -> quantize with a measured report per stage.
"""
