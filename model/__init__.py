"""The network: preprocessing, 3D U-Net, inference with uncertainty and Grad-CAM, training."""
