"""pyjob command-line front end."""
