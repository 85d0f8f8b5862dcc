"""Baselines for supermask tickets: small MLPs trained on the user's data, then quantized
(int8/int4 post-training, int4 and ternary quantization-aware) or deep-compressed, each
written as the file a device would load and measured from that file.

:mod:`.artifact` (the file format) is torch-free; :mod:`.train` needs torch.
"""
