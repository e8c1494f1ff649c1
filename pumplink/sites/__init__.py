"""Sites: who may see and run which pump (access), and the members, invitations and audit of a site."""
