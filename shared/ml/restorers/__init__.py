"""One restore function per model family (arrays in, arrays out); the registry names them."""
