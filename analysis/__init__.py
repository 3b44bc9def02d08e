"""Foundation: what is measured in frames: faces (detection, landmarks, crop and paste-back,
identity), and the reconstruction metrics (L1, PSNR, SSIM, AKD, AED, MKR)."""
