"""What every PyTorch baseline shares: the --device and --json flags and a device sync for
timing (the scripts run as `python3 benches/baselines/NAME.py`, so this folder is on the path)."""
import torch


def add_device_and_json(parser):
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results here")


def sync(device):
    """Waits for the device, so wall-clock times cover the work and only it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
