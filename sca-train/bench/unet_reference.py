#!/usr/bin/env python3
"""PyTorch reference of sca-train's U-Net and training step, for throughput comparison.

Same architecture as `sca_train::model::UNet`: per level two (conv3x3 -> BN -> ReLU),
2x2 max-pool down, 2x2 stride-2 transposed conv up, channel concat of the skip
(up-sampled features first, skip second), two more conv blocks, final 1x1 conv to
one logit. Convs followed by BN carry no bias (it would be cancelled by BN).
Loss: BCE-with-logits (mean); optimiser: Adam(lr=1e-3), i.e. AdamW with zero decay.

Prints one JSON line: {"impl": "pytorch", "tiles_per_s": ...}; on a GPU also the
peak memory PyTorch's allocator handed out and reserved during the timed steps, and
the driver's count of memory in use after them less before the model.
Run: python3 unet_reference.py --size 256 --batch 8 --depth 4 --base-width 32 --steps 5
     python3 unet_reference.py --device cuda --amp bf16 --size 512 ...
--amp bf16 runs the forward pass under torch.autocast(bfloat16) (weights and
optimiser stay fp32): the upper anchor for what mixed precision buys.
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn


def block(cin, cout, bn):
    layers = []
    for i in range(2):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    def __init__(self, in_ch, depth, width, bn):
        super().__init__()
        w = [width * 2**l for l in range(depth + 1)]
        self.down = nn.ModuleList(block(in_ch if l == 0 else w[l - 1], w[l], bn) for l in range(depth))
        self.bottom = block(w[depth - 1], w[depth], bn)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[l + 1], w[l], 2, stride=2) for l in range(depth))
        self.dec = nn.ModuleList(block(2 * w[l], w[l], bn) for l in range(depth))
        self.head = nn.Conv2d(w[0], 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for l in reversed(range(len(self.up))):
            x = self.up[l](x)
            x = torch.cat([x, skips[l]], dim=1)
            x = self.dec[l](x)
        return self.head(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bn", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("unet_reference.py: --device cuda, but torch.cuda.is_available() is False")
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        # Plain fp32 matrix products and convolutions (no TF32), like sca-train's.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    torch.set_num_threads(a.threads)
    if cuda:
        # The driver's count of memory in use before the model (the context
        # made by this first call), as sca-train's bench counts its own.
        free, total = torch.cuda.mem_get_info(dev)
        used_before = total - free
    torch.manual_seed(0)
    model = UNet(a.in_channels, a.depth, a.base_width, not a.no_bn).to(dev)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.randn(a.batch, a.in_channels, a.size, a.size).to(dev)
    y = (torch.rand(a.batch, 1, a.size, a.size) > 0.5).float().to(dev)
    amp = a.amp == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        # .item() waits for the step, as sca-train's step returns its loss.
        return loss.item()

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": a.device,
        "amp": a.amp,
        "threads": torch.get_num_threads(),
        "size": a.size, "batch": a.batch, "depth": a.depth, "base_width": a.base_width,
        "batch_norm": not a.no_bn, "steps": a.steps,
        "s_per_step": dt / a.steps,
        "tiles_per_s": a.batch * a.steps / dt,
    }
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["gpu_mem_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        out["gpu_mem_reserved_bytes"] = torch.cuda.max_memory_reserved(dev)
        # Driver view: in use now less before the model (the allocator's
        # cache, the libraries' workspaces and loaded kernels included).
        free, total = torch.cuda.mem_get_info(dev)
        out["gpu_mem_driver_bytes"] = (total - free) - used_before
    # Peak resident memory of this process (Linux reports ru_maxrss in KiB).
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
