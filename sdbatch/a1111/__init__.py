"""A1111's conventions, pure: prompt syntax, sampler and schedule names, the parameters text images carry."""
