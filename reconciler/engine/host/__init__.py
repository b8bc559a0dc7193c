"""The single-host Docker adapter: `engine.Engine` over `observe`, `containers`, `images`."""
