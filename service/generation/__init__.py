"""Generation layer: corpus -> units -> rows -> groups -> prompts, and the decode loop."""
