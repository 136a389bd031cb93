"""The model room: loading checkpoints, finding decoder layers and projection roles, device placement."""
