"""OP-TEE's REE file system: secure storage kept by tee-supplicant in the
normal world, reached with OPTEE_RPC_CMD_FS.

    fs_rpc      core/tee/tee_fs_rpc.c     one FS RPC per file operation
    htree       core/tee/fs_htree.c       the hash tree of one file
    dirfile     core/tee/fs_dirfile.c     dirf.db, the directory of objects
    ree_fs      core/tee/tee_ree_fs.c     files, dirf.db caching, the FS mutex
    persistent  core/tee/tee_svc_storage.c  GP persistent objects over it

See docs/tee-model.md ("Secure storage") for the RPCs each TA operation
makes and what is simplified.
"""
