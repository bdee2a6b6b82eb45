"""What several test modules share and is no fixture: paths, synthetic images and problems, a render job
builder, the headless browser, the Ray worker hook. Test modules import from here, never from each other."""
