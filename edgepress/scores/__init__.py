"""Task scores beyond top-1: detection mAP (pycocotools)."""
