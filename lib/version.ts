/** The taskmesh version reported in registrations and health. */
export const VERSION = "0.1.0";
