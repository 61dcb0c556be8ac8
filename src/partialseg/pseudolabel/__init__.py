"""IPnP pseudo-labelling: specialist predictions → box prompts → generalist masks → refined pseudo-labels."""
