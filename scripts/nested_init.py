"""The starting weights of a nested variable-rate network, grown from a fixed-rate family.

    python scripts/nested_init.py small-rate-k2 small-rate-k3 small-rate-k6-r2 \\
        small-rate-k12-r2 small-rate-k20-r2 -o runs/nested-init.pt
    caeadmm train --config configs/variable_rate.yaml --images DIR -o runs/vr-msssim-grown \\
        init_from=runs/nested-init.pt model.lowest_quality_channels=2 ...

The models (registered names or files), lowest rate first: quality 0 starts as the first
one, the last one's channels are kept, and the channels rank in the order the family adds
them (caeadmm.channel_rank.grow_nested; docs/variable-rate.md, "Growing from the family").
"""

from __future__ import annotations

import argparse

from caeadmm import zoo
from caeadmm.channel_rank import grow_nested
from caeadmm.checkpoint import save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="the family, lowest rate first")
    parser.add_argument("-o", "--output", required=True, help="the model file to write")
    parser.add_argument("--quality-levels", type=int, default=9)
    args = parser.parse_args()
    net = grow_nested([zoo.load(name) for name in args.models], args.quality_levels)
    order = net.channel_rank.argsort()[: len(net.kept_channels())].tolist()
    print(f"{net.config.lowest_quality_channels} to {len(order)} channels, in the order {order}")
    print(f"wrote {save_model(net, args.output)}")


if __name__ == "__main__":
    main()
