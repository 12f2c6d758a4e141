"""The control plane: the config store, the lifecycle, the one change path, the controller,
the eval gate and the LoRA adapter lifecycle."""
