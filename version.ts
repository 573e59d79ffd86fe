/** The release version of switchyard; the release workflow tags the same number. */
export const VERSION = "0.1.0";
