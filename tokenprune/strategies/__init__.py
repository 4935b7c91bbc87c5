"""Built-in strategies: scores, transforms, selectors, soft-NMS decay terms and recipes."""
