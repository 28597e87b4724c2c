"""The training loop the torch stages share: epochs, resume, torchrun, distillation hints."""
