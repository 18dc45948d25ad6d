"""(architecture, state dict) → nn.Module; inputs; the layer walk with levels; hooks."""
